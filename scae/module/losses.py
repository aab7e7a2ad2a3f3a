"""Reconstruction losses, each a per-cell function plus an entry in :data:`LOSSES`.

Notation for one cell: x ∈ ℝ^G the target expression profile, x̂ the reconstruction,
cos(a, b) = a·b / (max(‖a‖, ε)·max(‖b‖, ε)) (torch's convention, so an all-zero cell gives 0,
never NaN), c ∈ ℕ^G raw counts, μ the predicted mean counts, θ the NB inverse dispersion,
π the zero-inflation probability. Every function returns one value per cell; training
minimises their mean over the minibatch. The hand-written backward passes some of them use
live in :mod:`scae.module._kernels`.

The minibatch types live in :mod:`scae.module.batch`, the count likelihoods in
:mod:`scae.module.likelihoods`. Adding a loss is one decorated function here plus one entry
in ``config/schema.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from .. import _schema
from ..config import InputError, check_number
from ..registry import LOSS_NEEDS
from ._kernels import _CosineSimilarity, _MeanSquaredError, kernel_enabled
from .batch import Batch, DecoderOutput
from .likelihoods import EPS, nb_nll, poisson_nll, zinb_nll

#: What the decoder must produce for a loss: a real-valued profile, or a count distribution.
OutputKind = Literal["expression", "poisson", "nb", "zinb"]


#: θ per gene (a learnt vector) or per gene and cell (a head of the decoder).
Dispersion = Literal["gene", "gene-cell"]


LossFn = Callable[[DecoderOutput, Batch, dict], Tensor]


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its per-cell function and the decoder output it needs."""

    name: str
    fn: LossFn
    output: OutputKind
    formula: str
    #: The loss's parameters and their defaults, the values a categorical one may take and
    #: the limits of a numeric one (JSON Schema's ``minimum``/``maximum`` keywords), as
    #: ``config/schema.yaml`` declares them under ``loss_params.<name>``.
    defaults: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    limits: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def uses_counts(self) -> bool:
        """Whether the loss models raw counts (a count head), rather than expression.

        For a registered loss, :func:`register_loss` has checked that
        :data:`scae.registry.LOSS_NEEDS` declares the same.
        """
        return self.output != "expression"

    def parameters(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Return the loss's parameters: the defaults updated by ``overrides``.

        An unknown name, a value outside its choices or range, or one of the wrong type is an
        error naming what is valid.

        Raises
        ------
        InputError
            For an unknown parameter or an invalid value.
        """
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
        """Return overrides that reach every categorical choice once.

        ``[{}]`` for a loss without one, else one dict per choice (the default's included) —
        the configurations a check of every code path trains.
        """
        if not self.choices:
            return [{}]
        return [{key: value} for key, values in self.choices.items() for value in values]


#: Every registered loss: its name → :class:`LossSpec` (formula, output head, default
#: parameters, their choices and limits), filled by :func:`register_loss`.
LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, output: OutputKind, formula: str) -> Callable[[LossFn], LossFn]:
    """Return a decorator that registers a per-cell loss function in :data:`LOSSES`.

    The decorated function takes ``(out, batch, params)`` — the :class:`DecoderOutput`, the
    :class:`Batch` and the loss's parameters — and returns one loss value per cell; it is
    returned unchanged.

    Parameters
    ----------
    name
        The loss's name, as ``config/schema.yaml`` and :func:`get_loss` know it.
    output
        What the decoder must produce for it (:data:`OutputKind`).
    formula
        The per-cell loss in the notation of the module docstring, for tables and the manual.

    The loss's parameters, their defaults, choices and limits are those ``config/schema.yaml``
    declares under ``loss_params.<name>`` (none if it declares none there).

    Raises
    ------
    ValueError
        When ``name`` is not one of the schema's ``losses``, which the workflow could not run,
        or :data:`scae.registry.LOSS_NEEDS` does not declare the counts its ``output`` needs.
    """
    if name not in _schema.allowed("losses"):
        raise ValueError(f"loss {name!r} is not in config/schema.yaml's losses enum; add it there")
    if name not in LOSS_NEEDS or ("counts" in LOSS_NEEDS[name]) != (output != "expression"):
        raise ValueError(
            f"loss {name!r} with a {output!r} output: declare what it needs in "
            "scae.registry.LOSS_NEEDS ('counts' exactly for a count output), which Snakemake's "
            "parse step reads without torch"
        )

    section = ("loss_params", name) if name in _schema.properties("loss_params") else ()

    def decorate(fn: LossFn) -> LossFn:
        LOSSES[name] = LossSpec(
            name=name,
            fn=fn,
            output=output,
            formula=formula,
            defaults=_schema.defaults(*section) if section else {},
            choices=_schema.choices(*section) if section else {},
            limits=_schema.limits(*section) if section else {},
        )
        return fn

    return decorate


def get_loss(name: str) -> LossSpec:
    """Return the registered loss ``name``.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid names.
    """
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
    """Draw indices (B, K) of negative partners j ≠ i uniformly from the batch.

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


@register_loss("mse", "expression", "mean_g (x̂_g − x_g)²")
def mse(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    """Return the mean squared error per cell: mean_g (x̂_g − x_g)²."""
    if kernel_enabled("mse"):
        return _MeanSquaredError.apply(out.expression, batch.x)
    return (out.expression - batch.x).pow(2).mean(dim=-1)


@register_loss("cosine", "expression", "1 − cos(x̂, x)")
def cosine(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    """Return the cosine distance per cell: 1 − cos(x̂, x) (1 for an all-zero cell)."""
    return 1 - cosine_similarity(out.expression, batch.x)


@register_loss(
    "cosine_embedding",
    "expression",
    "[ (1 − cos(x̂_i, x_i)) + Σ_k max(0, cos(x̂_i, x_j_k) − m) ] / (1 + K)",
)
def cosine_embedding(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    """Return the cosine embedding loss per cell, over its own pair and K negative pairs.

    torch.nn.CosineEmbeddingLoss over pairs: y = +1 for (x̂_i, x_i), y = −1 for K negatives
    (x̂_i, x_j), j another cell of the batch. The per-cell mean over its 1 + K pairs makes the
    batch mean equal torch's ``reduction='mean'`` over all pairs.

    ``params`` gives the margin m (``margin``) and K (``negatives_per_cell``); the negatives
    come from other groups of ``batch.groups`` when the minibatch carries them
    (:func:`sample_negatives`).
    """
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
)
def mse_cosine(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    """Return α·MSE + (1 − α)·cosine distance per cell, with α = ``params["alpha"]``."""
    alpha = params["alpha"]
    return alpha * mse(out, batch, params) + (1 - alpha) * cosine(out, batch, params)


@register_loss("pearson", "expression", "1 − r(x̂, x), r = cos(x̂ − mean(x̂), x − mean(x))")
def pearson(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    """Return 1 − r(x̂, x) per cell, r the Pearson correlation across genes."""
    return 1 - pearson_correlation(out.expression, batch.x)


@register_loss("poisson", "poisson", "Σ_g μ_g − c_g log μ_g + log Γ(c_g+1),  μ = softmax(ρ)·ℓ")
def poisson(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    """Return the Poisson negative log-likelihood of the counts per cell (:func:`poisson_nll`)."""
    return poisson_nll(batch.count_targets, out.mu)


@register_loss(
    "nb",
    "nb",
    "−Σ_g log NB(c_g; μ_g, θ_g),  μ = softmax(ρ)·ℓ",
)
def negative_binomial(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    """Return the NB negative log-likelihood of the raw counts per cell (:func:`nb_nll`).

    θ per gene or per gene and cell, as ``params["dispersion"]`` made the decoder's head.
    """
    return nb_nll(batch.count_targets, out.mu, out.theta)


@register_loss(
    "zinb",
    "zinb",
    "−Σ_g log[π_g·1(c_g=0) + (1−π_g)·NB(c_g; μ_g, θ_g)]",
)
def zero_inflated_negative_binomial(out: DecoderOutput, batch: Batch, params: dict) -> Tensor:
    """Return the ZINB negative log-likelihood of the raw counts per cell (:func:`zinb_nll`).

    θ per gene or per gene and cell, as ``params["dispersion"]`` made the decoder's head.
    """
    return zinb_nll(batch.count_targets, out.mu, out.theta, out.dropout_logits)
