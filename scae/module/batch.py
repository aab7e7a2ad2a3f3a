"""The minibatch a loss reads: the decoder's output, the targets and the sparse counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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
        """Compute ``log_factorial`` when not given, and the flat (B·G) index of each non-zero."""
        if self.log_factorial is None:
            self.log_factorial = self.per_cell(torch.lgamma(self.values + 1))
        self.flat = self.rows * self.shape[1] + self.cols

    @classmethod
    def from_dense(cls, counts: Tensor) -> SparseCounts:
        """Return the non-zero entries of the dense counts ``counts`` (B, G)."""
        rows, cols = counts.nonzero(as_tuple=True)
        return cls(rows, cols, counts[rows, cols], tuple(counts.shape))

    def to_dense(self) -> Tensor:
        """Return the counts as a dense (B, G) tensor, zeros included."""
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
    """One minibatch: the model's targets, the raw counts and the negative-sampling groups.

    ``x`` is dense; raw counts are dense (``counts``) or, as the trainer passes them, sparse
    (``sparse_counts``). ``groups`` drives negative sampling (labels or clusters).
    """

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
