"""Count likelihoods per cell: Poisson, negative binomial and zero-inflated NB.

c ∈ ℕ^G raw counts, μ the predicted mean counts, θ the NB inverse dispersion, π the
zero-inflation probability. Each takes dense counts or :class:`SparseCounts`, for which only
the non-zero counts are visited beside a closed form for the zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import SparseCounts

#: The ε of cos(a, b) = a·b / (max(‖a‖, ε)·max(‖b‖, ε)) and of log(μ + ε).
EPS = 1e-8
#: Integer counts up to this take log Γ(c+θ) − log Γ(θ) from a per-gene table (see below).
LGAMMA_TABLE_COUNTS = 32


def poisson_nll(counts: Tensor | SparseCounts, mu: Tensor) -> Tensor:
    """Σ_g −log Poisson(c_g; μ_g) = Σ_g [μ_g − c_g log μ_g + log Γ(c_g + 1)], per cell.

    With :class:`SparseCounts` the c·log μ and log Γ terms are summed over non-zeros only.
    """
    if isinstance(counts, SparseCounts):
        c_log_mu = counts.values * torch.log(counts.at(mu) + EPS)
        return mu.sum(dim=-1) - counts.per_cell(c_log_mu) + counts.log_factorial
    return (mu - torch.xlogy(counts, mu + EPS) + torch.lgamma(counts + 1)).sum(dim=-1)


def nb_log_prob(counts: Tensor, mu: Tensor, theta: Tensor) -> Tensor:
    """Elementwise log NB(c; μ, θ) with mean μ and variance μ + μ²/θ.

    log Γ(c+θ) − log Γ(θ) − log Γ(c+1) + θ(log θ − log(θ+μ)) + c(log μ − log(θ+μ)).
    """
    log_theta_mu = torch.log(theta + mu + EPS)
    return (
        torch.lgamma(counts + theta)
        - torch.lgamma(theta)
        - torch.lgamma(counts + 1)
        + theta * (torch.log(theta + EPS) - log_theta_mu)
        + counts * (torch.log(mu + EPS) - log_theta_mu)
    )


def _nb_zero_log_prob(mu: Tensor, theta: Tensor) -> Tensor:
    """Return log NB(0; μ, θ) = θ(log θ − log(θ+μ)) for every entry (B, G)."""
    return theta * (torch.log(theta + EPS) - torch.log(mu + (theta + EPS)))


def _lgamma_ratio(counts: SparseCounts, theta: Tensor) -> Tensor:
    """Return log Γ(c+θ) − log Γ(θ) at the non-zero entries (nnz,).

    With θ per gene, integer counts c ≤ 32 (98–99.7 % of the non-zeros of UMI data) read it
    from a (G, 32) table of Σ_{j<c} log(θ_g + j), built once per minibatch: a few thousand
    logs instead of a scalar lgamma (and a digamma in the backward pass) per non-zero, and
    exact where lgamma's difference of two large numbers loses precision at large θ.
    """
    c = counts.values
    if theta.dim() == 2:
        theta_nz = counts.at(theta)
        return torch.lgamma(c + theta_nz) - torch.lgamma(theta_nz)
    k = LGAMMA_TABLE_COUNTS
    steps = torch.arange(k, dtype=theta.dtype, device=theta.device)
    table = torch.log(theta[:, None] + steps).cumsum(dim=1)  # [g, c−1]
    index = counts.cols * k + (c.clamp(1, k).long() - 1)
    ratio = table.reshape(-1).index_select(0, index)
    other = (c > k) | (c != torch.round(c))
    if other.any():
        where = other.nonzero().squeeze(1)
        theta_other = theta.index_select(0, counts.cols.index_select(0, where))
        c_other = c.index_select(0, where)
        ratio = ratio.index_put(
            (where,), torch.lgamma(c_other + theta_other) - torch.lgamma(theta_other)
        )
    return ratio


def _nb_nonzero_excess(counts: SparseCounts, mu: Tensor, theta: Tensor) -> Tensor:
    """Return log NB(c) − log NB(0) at the non-zero entries (nnz,).

    Without the −log Γ(c+1) constant: c(log μ − log(θ+μ)) + log Γ(c+θ) − log Γ(θ).
    """
    c, mu_nz, theta_nz = counts.values, counts.at(mu), counts.at(theta)
    return c * (torch.log(mu_nz + EPS) - torch.log(theta_nz + mu_nz + EPS)) + _lgamma_ratio(
        counts, theta
    )


def _nb_nll_sparse(counts: SparseCounts, mu: Tensor, theta: Tensor) -> Tensor:
    zero = -_nb_zero_log_prob(mu, theta).sum(dim=-1)
    return zero - counts.per_cell(_nb_nonzero_excess(counts, mu, theta)) + counts.log_factorial


def nb_nll(counts: Tensor | SparseCounts, mu: Tensor, theta: Tensor) -> Tensor:
    """Σ_g −log NB(c_g; μ_g, θ_g), per cell.

    With :class:`SparseCounts`: −Σ_g log NB(0; μ_g, θ_g) over all genes, corrected by
    log NB(c) − log NB(0) at the non-zero entries only (the log Γ terms vanish at c = 0).
    """
    if isinstance(counts, SparseCounts):
        return _nb_nll_sparse(counts, mu, theta)
    return -nb_log_prob(counts, mu, theta).sum(dim=-1)


def zinb_nll(
    counts: Tensor | SparseCounts, mu: Tensor, theta: Tensor, dropout_logits: Tensor
) -> Tensor:
    """Return Σ_g −log ZINB(c_g) per cell, with π = sigmoid(dropout_logits).

    ZINB(0) = π + (1−π)·NB(0),   ZINB(c>0) = (1−π)·NB(c).
    Computed in log space: log π = −softplus(−l), log(1−π) = −softplus(l).
    """
    if isinstance(counts, SparseCounts):
        # log π = l − softplus(l), so log ZINB(0) = −softplus(l) + logaddexp(l, log NB(0)).
        log_not_pi = -F.softplus(dropout_logits)
        log_nb0 = _nb_zero_log_prob(mu, theta)
        zero = torch.where(counts.zero_mask(), torch.logaddexp(dropout_logits, log_nb0), 0.0)
        log_nb_nonzero = counts.at(log_nb0) + _nb_nonzero_excess(counts, mu, theta)
        return (
            -(log_not_pi + zero).sum(dim=-1)
            - counts.per_cell(log_nb_nonzero)
            + counts.log_factorial
        )
    log_pi = -F.softplus(-dropout_logits)
    log_not_pi = -F.softplus(dropout_logits)
    log_nb = nb_log_prob(counts, mu, theta)
    zero = torch.logaddexp(log_pi, log_not_pi + log_nb)
    log_prob = torch.where(counts < 0.5, zero, log_not_pi + log_nb)
    return -log_prob.sum(dim=-1)
