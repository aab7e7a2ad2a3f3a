"""Reconstruction losses, each a per-cell function plus an entry in :data:`LOSSES`.

Notation for one cell: x ∈ ℝ^G the target expression profile, x̂ the reconstruction,
cos(a, b) = a·b / (max(‖a‖, ε)·max(‖b‖, ε)) (torch's convention, so an all-zero cell gives 0,
never NaN), c ∈ ℕ^G raw counts, μ the predicted mean counts, θ the NB inverse dispersion,
π the zero-inflation probability. Every function returns one value per cell; training
minimises their mean over the minibatch. The hand-written backward passes some of them use
live in :mod:`scae.module._kernels`.

Adding a loss is one decorated function here plus one entry in ``config/schema.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import InputError, check_number
from ._kernels import (
    LGAMMA_TABLE_COUNTS,
    _CosineSimilarity,
    _MeanSquaredError,
    _NegativeBinomialNLL,
    kernel_enabled,
)

#: What the decoder must produce for a loss: a real-valued profile, or a count distribution.
OutputKind = Literal["expression", "poisson", "nb", "zinb"]


#: θ per gene (a learnt vector) or per gene and cell (a head of the decoder).
Dispersion = Literal["gene", "gene-cell"]


DISPERSIONS: tuple[str, ...] = get_args(Dispersion)


EPS = 1e-8


@dataclass
class DecoderOutput:
    """What a decoder predicts for a minibatch (B cells × G genes)."""

    expression: Tensor | None = None  # x̂, same space as the model's target
    mu: Tensor | None = None  # predicted mean counts
    theta: Tensor | None = None  # NB inverse dispersion, (G,) or (B, G)
    dropout_logits: Tensor | None = None  # logit(π) for ZINB


@dataclass
class SparseCounts:
    """The non-zero raw counts of a minibatch of B cells × G genes, in coordinate form.

    Count likelihoods only need the non-zero entries besides terms that hold for every entry
    (c = 0 simplifies them: log NB(0) = θ(log θ − log(θ+μ))), so a minibatch's counts never
    need densifying. ``log_factorial`` is Σ_g log Γ(c_g + 1) per cell, a constant of the data
    (computed here when not given).
    """

    rows: Tensor  # (nnz,) int64: cell within the minibatch
    cols: Tensor  # (nnz,) int64: gene
    values: Tensor  # (nnz,) the counts, all > 0
    shape: tuple[int, int]
    log_factorial: Tensor | None = None

    def __post_init__(self):
        if self.log_factorial is None:
            self.log_factorial = self.per_cell(torch.lgamma(self.values + 1))
        self.flat = self.rows * self.shape[1] + self.cols

    @classmethod
    def from_dense(cls, counts: Tensor) -> SparseCounts:
        rows, cols = counts.nonzero(as_tuple=True)
        return cls(rows, cols, counts[rows, cols], tuple(counts.shape))

    def to_dense(self) -> Tensor:
        dense = self.values.new_zeros(self.shape)
        dense.view(-1)[self.flat] = self.values
        return dense

    def at(self, values: Tensor) -> Tensor:
        """``values`` (B, G), or (G,) per gene, at the non-zero entries."""
        if values.dim() == 1:
            return values.index_select(0, self.cols)
        return values.reshape(-1).index_select(0, self.flat)

    def per_cell(self, values: Tensor) -> Tensor:
        """Sum values at the non-zero entries (nnz,) per cell (B,)."""
        return values.new_zeros(self.shape[0]).index_add(0, self.rows, values)

    def zero_mask(self) -> Tensor:
        """(B, G) bool, True where the count is 0."""
        mask = torch.ones(self.shape, dtype=torch.bool, device=self.values.device)
        mask.view(-1)[self.flat] = False
        return mask


@dataclass
class Batch:
    """One minibatch. ``x`` is dense; raw counts are dense (``counts``) or, as the trainer
    passes them, sparse (``sparse_counts``). ``groups`` drives negative sampling (labels or
    clusters)."""

    x: Tensor
    counts: Tensor | None = None
    groups: Tensor | None = None
    generator: torch.Generator | None = None
    sparse_counts: SparseCounts | None = None

    @property
    def count_targets(self) -> Tensor | SparseCounts:
        """The raw counts for a count likelihood, sparse when available."""
        if self.sparse_counts is not None:
            return self.sparse_counts
        if self.counts is None:
            raise ValueError("this loss models raw counts but the minibatch carries none")
        return self.counts


LossFn = Callable[[DecoderOutput, Batch, dict], Tensor]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its per-cell function and the decoder output it needs."""

    name: str
    fn: LossFn
    output: OutputKind
    formula: str
    #: The loss's parameters and their defaults, the values a categorical one may take and
    #: the limits of a numeric one (JSON Schema's ``minimum``/``maximum`` keywords).
    #: ``config/schema.yaml`` repeats all three for the workflow; tests keep them equal.
    defaults: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    limits: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def uses_counts(self) -> bool:
        return self.output != "expression"

    def parameters(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated by ``overrides``. An unknown name, a value outside its
        choices or range, or one of the wrong type is an error naming what is valid."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            valid = ", ".join(self.defaults) or "none"
            raise InputError(
                f"loss {self.name!r} has no parameter {', '.join(unknown)}; "
                f"its parameters are: {valid}"
            )
        for key, value in overrides.items():
            self._check(key, value)
        return {**self.defaults, **overrides}

    def _check(self, key: str, value: Any) -> None:
        where = f"loss {self.name!r} parameter {key}"
        if key in self.choices:
            if value not in self.choices[key]:
                raise InputError(
                    f"{where}={value!r}; choose one of: {', '.join(self.choices[key])}"
                )
            return
        check_number(
            where, value, self.limits.get(key, {}), integer=isinstance(self.defaults[key], int)
        )

    def variants(self) -> list[dict[str, str]]:
        """Overrides reaching every categorical choice once: ``[{}]`` for a loss without
        one, else one dict per choice (the default's included) — the configurations a
        check of every code path trains."""
        if not self.choices:
            return [{}]
        return [{key: value} for key, values in self.choices.items() for value in values]


#: Every registered loss: its name → :class:`LossSpec` (formula, output head, default
#: parameters, their choices and limits), filled by :func:`register_loss`.
LOSSES: dict[str, LossSpec] = {}


def register_loss(
    name: str,
    output: OutputKind,
    formula: str,
    defaults: dict[str, Any] | None = None,
    choices: dict[str, tuple[str, ...]] | None = None,
    limits: dict[str, dict[str, float]] | None = None,
) -> Callable[[LossFn], LossFn]:
    def decorate(fn: LossFn) -> LossFn:
        LOSSES[name] = LossSpec(
            name=name,
            fn=fn,
            output=output,
            formula=formula,
            defaults=dict(defaults or {}),
            choices=dict(choices or {}),
            limits=dict(limits or {}),
        )
        return fn

    return decorate


def get_loss(name: str) -> LossSpec:
    """The registered loss ``name``; the error lists the valid names."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid losses are: {', '.join(LOSSES)}") from None


def cosine_similarity(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """Row-wise cos(a, b) = a·b / (max(‖a‖, ε)·max(‖b‖, ε)); 0 when either row is zero."""
    a, b = torch.broadcast_tensors(a, b)
    if kernel_enabled("cosine"):
        return _CosineSimilarity.apply(a, b, eps)
    norm_a = torch.linalg.vector_norm(a, dim=-1).clamp_min(eps)
    return torch.linalg.vecdot(a, b) / (norm_a * torch.linalg.vector_norm(b, dim=-1).clamp_min(eps))


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

    Drawn and returned on the CPU with ``generator`` (a CPU generator, as the trainer's):
    the pairs of a seed are the same on every device, and a CUDA minibatch needs no CUDA
    generator.
    """
    if n_cells < 2:
        raise ValueError("cosine_embedding needs minibatches of at least 2 cells")
    weights = 1.0 - torch.eye(n_cells)
    if groups is not None:
        cpu_groups = groups.cpu()
        other_group = (cpu_groups[:, None] != cpu_groups[None, :]).float()
        has_other = other_group.sum(dim=1, keepdim=True) > 0
        weights = torch.where(has_other, other_group, weights)
    return torch.multinomial(weights, per_cell, replacement=True, generator=generator)


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
    """log NB(0; μ, θ) = θ(log θ − log(θ+μ)) for every entry (B, G)."""
    return theta * (torch.log(theta + EPS) - torch.log(mu + (theta + EPS)))


def _lgamma_ratio(counts: SparseCounts, theta: Tensor) -> Tensor:
    """log Γ(c+θ) − log Γ(θ) at the non-zero entries (nnz,).

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
    """log NB(c) − log NB(0) at the non-zero entries (nnz,), without the −log Γ(c+1) constant:

    c(log μ − log(θ+μ)) + log Γ(c+θ) − log Γ(θ).
    """
    c, mu_nz, theta_nz = counts.values, counts.at(mu), counts.at(theta)
    return c * (torch.log(mu_nz + EPS) - torch.log(theta_nz + mu_nz + EPS)) + _lgamma_ratio(
        counts, theta
    )


def _nb_nll_sparse(counts: SparseCounts, mu: Tensor, theta: Tensor) -> Tensor:
    if theta.dim() == 1 and kernel_enabled("nb"):
        nll = _NegativeBinomialNLL.apply(mu.contiguous(), theta, counts, EPS)
        return nll + counts.log_factorial
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
    """Σ_g −log ZINB(c_g), per cell, with π = sigmoid(dropout_logits):

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


@register_loss("mse", "expression", "mean_g (x̂_g − x_g)²")
def mse(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    if kernel_enabled("mse"):
        return _MeanSquaredError.apply(out.expression, batch.x)
    return (out.expression - batch.x).pow(2).mean(dim=-1)


@register_loss("cosine", "expression", "1 − cos(x̂, x)")
def cosine(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    return 1 - cosine_similarity(out.expression, batch.x)


@register_loss(
    "cosine_embedding",
    "expression",
    "[ (1 − cos(x̂_i, x_i)) + Σ_k max(0, cos(x̂_i, x_j_k) − m) ] / (1 + K)",
    defaults={"margin": 0.0, "negatives_per_cell": 1, "negative_sampling": "random"},
    choices={"negative_sampling": ("random", "label", "cluster")},
    limits={"margin": {"minimum": -1, "maximum": 1}, "negatives_per_cell": {"minimum": 1}},
)
def cosine_embedding(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    """torch.nn.CosineEmbeddingLoss over pairs: y = +1 for (x̂_i, x_i), y = −1 for K negatives
    (x̂_i, x_j), j another cell of the batch. The per-cell mean over its 1 + K pairs makes the
    batch mean equal torch's ``reduction='mean'`` over all pairs."""
    recon, x = out.expression, batch.x
    negatives = sample_negatives(
        len(x), params["negatives_per_cell"], batch.groups, batch.generator
    ).to(x.device)
    positive = 1 - cosine_similarity(recon, x)
    negative_cos = cosine_similarity(recon[:, None, :], x[negatives])
    negative = (negative_cos - params["margin"]).clamp_min(0).sum(dim=1)
    return (positive + negative) / (1 + negatives.shape[1])


@register_loss(
    "mse_cosine",
    "expression",
    "α·mean_g (x̂_g − x_g)² + (1 − α)·(1 − cos(x̂, x))",
    defaults={"alpha": 0.5},
    limits={"alpha": {"minimum": 0, "maximum": 1}},
)
def mse_cosine(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    alpha = params["alpha"]
    return alpha * mse(out, batch, params) + (1 - alpha) * cosine(out, batch, params)


@register_loss("pearson", "expression", "1 − r(x̂, x), r = cos(x̂ − mean(x̂), x − mean(x))")
def pearson(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    return 1 - pearson_correlation(out.expression, batch.x)


@register_loss("poisson", "poisson", "Σ_g μ_g − c_g log μ_g + log Γ(c_g+1),  μ = softmax(ρ)·ℓ")
def poisson(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    return poisson_nll(batch.count_targets, out.mu)


@register_loss(
    "nb",
    "nb",
    "−Σ_g log NB(c_g; μ_g, θ_g),  μ = softmax(ρ)·ℓ",
    defaults={"dispersion": "gene"},
    choices={"dispersion": DISPERSIONS},
)
def negative_binomial(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    return nb_nll(batch.count_targets, out.mu, out.theta)


@register_loss(
    "zinb",
    "zinb",
    "−Σ_g log[π_g·1(c_g=0) + (1−π_g)·NB(c_g; μ_g, θ_g)]",
    defaults={"dispersion": "gene"},
    choices={"dispersion": DISPERSIONS},
)
def zero_inflated_negative_binomial(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    return zinb_nll(batch.count_targets, out.mu, out.theta, out.dropout_logits)
