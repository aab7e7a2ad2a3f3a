"""The cells a model trains on, as device tensors, and their minibatches."""

from __future__ import annotations

import functools
import hashlib
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..config import MIN_STD, InputError
from ..module.batch import Batch, DecoderOutput, SparseCounts

InputScaling = Literal["none", "zscore"]


class CellData:
    """Sparse views of a preprocessed AnnData that yield dense minibatches one at a time.

    ``x`` is log-normalized expression (the evaluation space), ``counts`` the raw counts of
    the same genes. The model's input (and target, for expression losses) is ``x`` or, with
    ``input_scaling='zscore'``, (x − mean_train)/sd_train.

    The keyword arguments name where each field lives (the defaults are the layout of
    :func:`scae.data.preprocess`); ``scaling`` and ``target_sum``, when given, replace the
    values stored in ``adata`` (a trained model brings its own to new cells). Without a
    ``split_key`` column the cells can be embedded and reconstructed, not trained on.
    """

    def __init__(
        self,
        adata: ad.AnnData,
        input_scaling: InputScaling = "none",
        group_key: str | None = None,
        *,
        counts_layer: str = "counts",
        split_key: str = "split",
        library_size_key: str = "library_size",
        scaling: tuple[np.ndarray, np.ndarray] | None = None,
        target_sum: float | None = None,
    ):
        self.x = sp.csr_matrix(adata.X, dtype=np.float32)
        self.counts = sp.csr_matrix(adata.layers[counts_layer], dtype=np.float32)
        self.counts_library = np.asarray(self.counts.sum(axis=1), dtype=np.float32).ravel()
        self._log_factorial: np.ndarray | None = None
        self.library_size = adata.obs[library_size_key].to_numpy(np.float32)
        self.target_sum = float(
            adata.uns["scae"]["target_sum"] if target_sum is None else target_sum
        )
        self.split = adata.obs[split_key].astype(str).to_numpy() if split_key in adata.obs else None
        self.input_scaling = input_scaling
        mean, std = (
            scaling
            if scaling is not None
            else (
                adata.var["train_mean"].to_numpy(np.float32),
                adata.var["train_std"].to_numpy(np.float32),
            )
        )
        self.mean = torch.from_numpy(np.asarray(mean, dtype=np.float32))
        self.std = torch.from_numpy(np.maximum(np.asarray(std, dtype=np.float32), MIN_STD))
        self.groups = None
        if group_key:
            codes = pd.Series(adata.obs[group_key]).astype("category").cat.codes.to_numpy()
            self.groups = torch.from_numpy(codes.astype(np.int64))

    @functools.cached_property
    def digest(self) -> str:
        """A SHA-256 of the cells as training reads them, so a checkpoint knows its data.

        It covers the expression and count matrices (pattern and values), the split, the
        library sizes, the negative-sampling groups and the scaling: two preprocessings that
        differ in anything a run reads (another HVG set, a molecule split) differ here.
        """
        h = hashlib.sha256()
        for matrix in (self.x, self.counts):
            for part in (np.asarray(matrix.shape), matrix.indptr, matrix.indices, matrix.data):
                h.update(np.ascontiguousarray(part).data)
        h.update("\0".join(self.split if self.split is not None else []).encode())
        for part in (self.library_size, self.mean.numpy(), self.std.numpy()):
            h.update(part.data)
        if self.groups is not None:
            h.update(self.groups.numpy().data)
        h.update(repr(self.target_sum).encode())
        return h.hexdigest()[:16]

    @property
    def n_genes(self) -> int:
        """Number of genes (columns of ``x`` and ``counts``)."""
        return self.x.shape[1]

    @property
    def n_cells(self) -> int:
        """Number of cells (rows of ``x`` and ``counts``)."""
        return self.x.shape[0]

    def rows(self, split: str) -> np.ndarray:
        """Return the row indices of the cells in ``split`` (``train``, ``val`` or ``test``).

        Raises
        ------
        ValueError
            When the cells carry no split column (``split_key`` was not in ``obs``).
        """
        if self.split is None:
            raise ValueError(
                "these cells carry no train/val/test split column in obs; "
                "training needs one (scae.preprocess or scae.Autoencoder."
                "setup_anndata adds it)"
            )
        return np.flatnonzero(self.split == split)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Map expression ``x`` to the model's input: (x − mean_train)/sd_train under z-scoring.

        Without ``input_scaling='zscore'``, ``x`` is returned unchanged.
        """
        if self.input_scaling != "zscore":
            return x
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def unscale(self, y: torch.Tensor) -> torch.Tensor:
        """Map a model-space output ``y`` back to expression: the inverse of :meth:`scale`."""
        if self.input_scaling != "zscore":
            return y
        return y * self.std.to(y.device) + self.mean.to(y.device)

    @property
    def log_factorial(self) -> np.ndarray:
        """Σ_g log Γ(c_g + 1) per cell: the count likelihoods' data-only constant."""
        if self._log_factorial is None:
            self._log_factorial = np.empty(self.counts.shape[0], dtype=np.float32)
            for start in range(0, self.counts.shape[0], 65536):  # bounded temporaries
                chunk = self.counts[start : start + 65536]
                terms = torch.lgamma(torch.from_numpy(chunk.data) + 1).double().numpy()
                cumulative = np.concatenate([[0.0], np.cumsum(terms)])
                self._log_factorial[start : start + chunk.shape[0]] = (
                    cumulative[chunk.indptr[1:]] - cumulative[chunk.indptr[:-1]]
                )
        return self._log_factorial

    def sparse_counts(self, rows: np.ndarray) -> SparseCounts:
        """Return the raw counts of ``rows`` in coordinate form, never densified."""
        sub = self.counts[rows]
        cells = np.repeat(np.arange(len(rows)), np.diff(sub.indptr))
        return SparseCounts(
            rows=torch.from_numpy(cells),
            cols=torch.from_numpy(sub.indices.astype(np.int64)),
            values=torch.from_numpy(sub.data),
            shape=(len(rows), self.n_genes),
            log_factorial=torch.from_numpy(self.log_factorial[rows]),
        )

    def thinned_expression(
        self, rows: np.ndarray, keep: float, generator: torch.Generator
    ) -> torch.Tensor:
        """Expression of ``rows`` from their counts thinned binomially, a dense minibatch.

        Each molecule is kept with probability ``keep``; the thinned counts c' are normalized
        as preprocessing normalized the full ones, at the expected library size:
        log1p(c' / (keep · L) · target_sum), L the cell's library size over every kept gene, so
        E[c'] / (keep · L) = c / L. Only the stored non-zero counts are drawn.
        """
        sub = self.counts[rows]
        cells = torch.from_numpy(np.repeat(np.arange(len(rows)), np.diff(sub.indptr)))
        values = torch.from_numpy(sub.data)
        thinned = torch.binomial(values, torch.full_like(values, keep), generator=generator)
        library = torch.from_numpy(self.library_size[rows] * np.float32(keep))
        x = torch.zeros(len(rows), self.n_genes)
        x[cells, torch.from_numpy(sub.indices.astype(np.int64))] = torch.log1p(
            thinned / library[cells] * self.target_sum
        )
        return x

    def batch(
        self, rows: np.ndarray, with_counts: bool
    ) -> tuple[torch.Tensor, Batch, torch.Tensor]:
        """(model input, loss targets, count-head library sizes) for ``rows``.

        The input is densified (``rows`` only); raw counts stay sparse (``sparse_counts``).
        """
        x = torch.from_numpy(self.x[rows].toarray())
        counts = self.sparse_counts(rows) if with_counts else None
        groups = self.groups[rows] if self.groups is not None else None
        inputs = self.scale(x)
        return (
            inputs,
            Batch(x=inputs, groups=groups, sparse_counts=counts),
            torch.from_numpy(self.counts_library[rows]),
        )

    def to_expression(self, out: DecoderOutput, rows: np.ndarray) -> torch.Tensor:
        """Map a decoder output to the common space log1p(normalized expression).

        Count models: log1p(E[c] / library_size · target_sum), the log-normalized predicted
        mean, where E[c] = μ, or (1 − π)·μ under zero inflation.
        """
        if out.expression is not None:
            return self.unscale(out.expression)
        mean = out.mu
        if out.dropout_logits is not None:
            mean = mean * torch.sigmoid(-out.dropout_logits)
        library = torch.from_numpy(self.library_size[rows]).to(mean.device)
        return torch.log1p(mean / library[:, None] * self.target_sum)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when torch sees a GPU, else the CPU; anything else as torch reads it.

    A CUDA device this process cannot use is an error here, before any work, rather than
    torch's "Torch not compiled with CUDA enabled" at the first tensor moved.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= visible:
            raise InputError(
                f"train.device is {str(device)!r} but this job sees {visible} CUDA device(s) "
                f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use "
                "device: auto (CUDA when present, else the CPU), or give the job a GPU "
                "(on SLURM: set-resources: {train: {gpu: 1}} in the profile)"
            )
    return resolved


# Independent random streams per (seed, epoch); validation uses epoch 0, which training never does.
SHUFFLE, DROPOUT, NEGATIVES, CORRUPTION = range(4)


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def _minibatches(rows: np.ndarray, batch_size: int, rng: np.random.Generator | None):
    order = rng.permutation(rows) if rng is not None else rows
    # A trailing batch of one cell would break batch norm; it is seen in other epochs.
    stop = len(order) - 1 if len(order) % batch_size == 1 and len(order) > 1 else len(order)
    for start in range(0, stop, batch_size):
        yield order[start : min(start + batch_size, stop)]


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    sparse = batch.sparse_counts
    if sparse is not None:
        sparse = SparseCounts(
            rows=sparse.rows.to(device),
            cols=sparse.cols.to(device),
            values=sparse.values.to(device),
            shape=sparse.shape,
            log_factorial=sparse.log_factorial.to(device),
        )
    return Batch(
        x=batch.x.to(device),
        counts=batch.counts.to(device) if batch.counts is not None else None,
        groups=batch.groups.to(device) if batch.groups is not None else None,
        generator=batch.generator,
        sparse_counts=sparse,
    )
