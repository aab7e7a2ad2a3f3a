"""Reconstruction losses, each a per-cell function plus an entry in :data:`LOSSES`.

Notation for one cell: x ∈ ℝ^G the target expression profile, x̂ the reconstruction,
cos(a, b) = a·b / (max(‖a‖, ε)·max(‖b‖, ε)) (torch's convention, so an all-zero cell gives 0,
never NaN), c ∈ ℕ^G raw counts, μ the predicted mean counts, θ the NB inverse dispersion,
π the zero-inflation probability. Every function returns one value per cell; training
minimises their mean over the minibatch.

Adding a loss is one decorated function here plus one entry in ``config/schema.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

#: What the decoder must produce for a loss: a real-valued profile, or a count distribution.
OutputKind = Literal["expression", "poisson", "nb", "zinb"]
EPS = 1e-8


@dataclass
class DecoderOutput:
    """What a decoder predicts for a minibatch (B cells × G genes)."""

    expression: Tensor | None = None  # x̂, same space as the model's target
    mu: Tensor | None = None  # predicted mean counts
    theta: Tensor | None = None  # NB inverse dispersion, (G,) or (B, G)
    dropout_logits: Tensor | None = None  # logit(π) for ZINB


@dataclass
class Batch:
    """One minibatch, densified. ``groups`` drives negative sampling (labels or clusters)."""

    x: Tensor
    counts: Tensor | None = None
    groups: Tensor | None = None
    generator: torch.Generator | None = None


LossFn = Callable[[DecoderOutput, Batch, dict], Tensor]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its per-cell function and the decoder output it needs."""

    name: str
    fn: LossFn
    output: OutputKind
    formula: str

    @property
    def uses_counts(self) -> bool:
        return self.output != "expression"


LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, output: OutputKind, formula: str) -> Callable[[LossFn], LossFn]:
    def decorate(fn: LossFn) -> LossFn:
        LOSSES[name] = LossSpec(name=name, fn=fn, output=output, formula=formula)
        return fn

    return decorate


def get_loss(name: str) -> LossSpec:
    """The registered loss ``name``; the error lists the valid names."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; valid losses are: {', '.join(LOSSES)}"
        ) from None


# --- building blocks ---------------------------------------------------------------------


def cosine_similarity(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """Row-wise cos(a, b) = a·b / (max(‖a‖, ε)·max(‖b‖, ε)); 0 when either row is zero."""
    norms = a.norm(dim=-1).clamp_min(eps) * b.norm(dim=-1).clamp_min(eps)
    return (a * b).sum(dim=-1) / norms


def pearson_correlation(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """Row-wise Pearson r: the cosine of the rows centred by their own means."""
    return cosine_similarity(
        a - a.mean(dim=-1, keepdim=True), b - b.mean(dim=-1, keepdim=True), eps
    )


def sample_negatives(
    n_cells: int,
    per_cell: int,
    groups: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices (B, K) of negative partners j ≠ i drawn uniformly from the batch.

    With ``groups``, j is drawn among cells of another group; a cell whose group fills the
    whole batch falls back to any other cell.
    """
    if n_cells < 2:
        raise ValueError("cosine_embedding needs minibatches of at least 2 cells")
    weights = 1.0 - torch.eye(n_cells)
    if groups is not None:
        other_group = (groups[:, None] != groups[None, :]).float()
        has_other = other_group.sum(dim=1, keepdim=True) > 0
        weights = torch.where(has_other, other_group, weights)
    return torch.multinomial(weights, per_cell, replacement=True, generator=generator)


def poisson_nll(counts: Tensor, mu: Tensor) -> Tensor:
    """Σ_g −log Poisson(c_g; μ_g) = Σ_g [μ_g − c_g log μ_g + log Γ(c_g + 1)], per cell."""
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


def nb_nll(counts: Tensor, mu: Tensor, theta: Tensor) -> Tensor:
    """Σ_g −log NB(c_g; μ_g, θ_g), per cell."""
    return -nb_log_prob(counts, mu, theta).sum(dim=-1)


def zinb_nll(counts: Tensor, mu: Tensor, theta: Tensor, dropout_logits: Tensor) -> Tensor:
    """Σ_g −log ZINB(c_g), per cell, with π = sigmoid(dropout_logits):

    ZINB(0) = π + (1−π)·NB(0),   ZINB(c>0) = (1−π)·NB(c).
    Computed in log space: log π = −softplus(−l), log(1−π) = −softplus(l).
    """
    log_pi = -F.softplus(-dropout_logits)
    log_not_pi = -F.softplus(dropout_logits)
    log_nb = nb_log_prob(counts, mu, theta)
    zero = torch.logaddexp(log_pi, log_not_pi + log_nb)
    log_prob = torch.where(counts < 0.5, zero, log_not_pi + log_nb)
    return -log_prob.sum(dim=-1)


# --- the registered losses ---------------------------------------------------------------


@register_loss("mse", "expression", "mean_g (x̂_g − x_g)²")
def mse(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    return (out.expression - batch.x).pow(2).mean(dim=-1)


@register_loss("cosine", "expression", "1 − cos(x̂, x)")
def cosine(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    return 1 - cosine_similarity(out.expression, batch.x)


@register_loss(
    "cosine_embedding",
    "expression",
    "[ (1 − cos(x̂_i, x_i)) + Σ_k max(0, cos(x̂_i, x_j_k) − m) ] / (1 + K)",
)
def cosine_embedding(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    """torch.nn.CosineEmbeddingLoss over pairs: y = +1 for (x̂_i, x_i), y = −1 for K negatives
    (x̂_i, x_j), j another cell of the batch. The per-cell mean over its 1 + K pairs makes the
    batch mean equal torch's ``reduction='mean'`` over all pairs."""
    recon, x = out.expression, batch.x
    negatives = sample_negatives(
        len(x), params["negatives_per_cell"], batch.groups, batch.generator
    )
    positive = 1 - cosine_similarity(recon, x)
    negative_cos = cosine_similarity(recon[:, None, :], x[negatives])
    negative = (negative_cos - params["margin"]).clamp_min(0).sum(dim=1)
    return (positive + negative) / (1 + negatives.shape[1])


@register_loss("mse_cosine", "expression", "α·mean_g (x̂_g − x_g)² + (1 − α)·(1 − cos(x̂, x))")
def mse_cosine(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    alpha = params["alpha"]
    return alpha * mse(out, batch, params) + (1 - alpha) * cosine(out, batch, params)


@register_loss("pearson", "expression", "1 − r(x̂, x), r = cos(x̂ − mean(x̂), x − mean(x))")
def pearson(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    return 1 - pearson_correlation(out.expression, batch.x)


@register_loss("poisson", "poisson", "Σ_g μ_g − c_g log μ_g + log Γ(c_g+1),  μ = softmax(ρ)·ℓ")
def poisson(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    return poisson_nll(batch.counts, out.mu)


@register_loss("nb", "nb", "−Σ_g log NB(c_g; μ_g, θ_g),  μ = softmax(ρ)·ℓ")
def negative_binomial(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    return nb_nll(batch.counts, out.mu, out.theta)


@register_loss("zinb", "zinb", "−Σ_g log[π_g·1(c_g=0) + (1−π_g)·NB(c_g; μ_g, θ_g)]")
def zero_inflated_negative_binomial(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    return zinb_nll(batch.counts, out.mu, out.theta, out.dropout_logits)
