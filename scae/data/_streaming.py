"""The per-pass machinery of out-of-core preprocessing, over blocks of consecutive cells.

:func:`scae.data._passes.preprocess_rows` runs these passes in order: cell QC
(:func:`_cell_pass`), the gene filter on training cells (:func:`_gene_pass`), library sizes and
training-cell gene moments (:func:`_library_pass`) and the final matrix (:func:`_hvg_pass`).
Each keeps only per-cell and per-gene vectors between blocks (:class:`_CellQC`,
:class:`_Totals`); the final matrix is filled in arrays allocated once (:class:`_RowStack`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ..config import InputError
from .hvg import GeneMoments
from .mcv import binomial_split
from .params import MCVParams, PreprocessParams
from .readers import CountRows

logger = logging.getLogger("scae")
# scanpy is imported inside the functions that use it: the training env (envs/torch.yaml)
# has no scanpy.


def _cell_blocks(
    rows: CountRows, select: Callable[[int, sp.csr_matrix], np.ndarray], mcv: MCVParams | None
) -> Iterator[tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix | None]]:
    """Yield the rows ``select`` keeps, block by block.

    Each block is (input row numbers, counts, held-out molecules or None). With ``mcv`` the counts
    are the training molecules c' of :func:`scae.data.mcv.binomial_split`, drawn in row order from
    one generator per pass, so every pass (and the whole matrix at once) sees the same c' and c''.
    """
    generator = np.random.default_rng(mcv.seed) if mcv is not None else None
    for start, block in rows.blocks():
        keep = select(start, block)
        counts, heldout = block[keep], None
        if mcv is not None:
            counts, heldout = binomial_split(counts, mcv.train_fraction, generator)
        yield start + np.flatnonzero(keep), counts, heldout


def _row_sums(X: sp.csr_matrix) -> np.ndarray:
    return np.asarray(X.sum(axis=1)).ravel()


class _RowStack:
    """A CSR matrix filled block of rows by block of rows.

    The blocks go into arrays allocated once for its known number of stored entries (at most), so
    the result is never held twice.
    """

    def __init__(self, n_rows: int, n_cols: int, nnz: int) -> None:
        self.shape = (n_rows, n_cols)
        self.data = np.empty(nnz, dtype=np.float32)
        self.indices = np.empty(nnz, dtype=np.int32)
        self.indptr = np.zeros(n_rows + 1, dtype=np.int64)
        self.n_rows = self.nnz = 0

    def append(self, block: sp.csr_matrix) -> None:
        rows, nnz = self.n_rows, self.nnz
        self.data[nnz : nnz + block.nnz] = block.data
        self.indices[nnz : nnz + block.nnz] = block.indices
        self.indptr[rows + 1 : rows + 1 + block.shape[0]] = block.indptr[1:] + nnz
        self.n_rows, self.nnz = rows + block.shape[0], nnz + block.nnz

    def matrix(self) -> sp.csr_matrix:
        assert self.n_rows == self.shape[0]
        return sp.csr_matrix(
            (self.data[: self.nnz], self.indices[: self.nnz], self.indptr),
            shape=self.shape,
            copy=False,
        )


def _log_normalized(counts: sp.csr_matrix, target_sum: float) -> tuple[sp.csr_matrix, dict]:
    """Apply scanpy's normalize_total + log1p to a block of cells.

    Both act cell by cell. Return the result and the ``uns`` entry log1p leaves.
    """
    import scanpy as sc

    block = ad.AnnData(X=counts.copy())
    sc.pp.normalize_total(block, target_sum=target_sum)
    sc.pp.log1p(block)
    return block.X, dict(block.uns)


@dataclass(frozen=True)
class _CellQC:
    """Pass 1's result.

    It records which input rows passed QC (``passed``), the kept cells' input row
    numbers (``cells``; QC passed and some counts), each input row's position among them
    (``position``, −1 if dropped), the % mitochondrial counts (or None) and the QC in words.
    """

    passed: np.ndarray
    cells: np.ndarray
    position: np.ndarray
    pct: np.ndarray | None
    n_input: int
    text: str

    def select(self, start: int, block: sp.csr_matrix) -> np.ndarray:
        return self.passed[start : start + block.shape[0]]


def _cell_pass(
    rows: CountRows, params: PreprocessParams, mito: np.ndarray | None, mcv: MCVParams | None
) -> _CellQC:
    """Run pass 1: per-cell QC (genes detected, % mitochondrial counts).

    Then cells without counts (after the molecule split, with ``mcv``) are dropped.
    """
    n_input = rows.shape[0]
    passed = np.zeros(n_input, dtype=bool)
    pct = np.zeros(n_input, dtype=np.float32) if mito is not None else None

    def cell_qc(start: int, block: sp.csr_matrix) -> np.ndarray:
        keep = np.diff(block.indptr) >= params.min_genes
        if pct is not None:
            totals = _row_sums(block)
            mito_counts = _row_sums(block[:, mito])
            share = np.divide(
                100 * mito_counts, totals, out=np.zeros_like(totals), where=totals > 0
            )
            pct[start : start + block.shape[0]] = share
            keep &= share <= params.max_pct_mito
        passed[start : start + block.shape[0]] = keep
        return keep

    kept, zero = [], 0
    for ids, counts, _ in _cell_blocks(rows, cell_qc, mcv):
        nonzero = _row_sums(counts) > 0
        kept.append(ids[nonzero])
        zero += int((~nonzero).sum())
    cells = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    if zero:
        logger.info("removed %d cells with zero counts", zero)
    logger.info(
        "cell QC kept %d of %d cells (min_genes=%d, max_pct_mito=%s)",
        len(cells),
        n_input,
        params.min_genes,
        params.max_pct_mito,
    )
    position = np.full(n_input, -1, dtype=np.int64)
    position[cells] = np.arange(len(cells))
    text = (
        f"{n_input} cells in, {len(cells)} kept with min_genes={params.min_genes}, "
        f"max_pct_mito={params.max_pct_mito}"
    )
    return _CellQC(passed, cells, position, pct, n_input, text)


def _gene_pass(
    rows: CountRows,
    qc: _CellQC,
    is_train: np.ndarray,
    params: PreprocessParams,
    mcv: MCVParams | None,
    dataset: str,
) -> np.ndarray:
    """2. The genes detected in at least ``min_cells`` training cells."""
    n_genes = rows.shape[1]
    cells_per_gene = np.zeros(n_genes, dtype=np.int64)
    for ids, counts, _ in _cell_blocks(rows, qc.select, mcv):
        where = qc.position[ids]
        train = (where >= 0) & is_train[np.maximum(where, 0)]
        cells_per_gene += np.bincount(counts[train].indices, minlength=n_genes)
    genes = cells_per_gene >= params.min_cells
    if not genes.any():
        raise InputError(
            f"dataset {dataset!r}: no gene is detected in min_cells={params.min_cells} "
            f"training cells ({qc.text}; {int(is_train.sum())} training cells); lower "
            "preprocess.min_cells or use more cells"
        )
    return genes


def _kept_blocks(
    rows: CountRows, qc: _CellQC, genes: np.ndarray, mcv: MCVParams | None
) -> Iterator[tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix | None]]:
    """(positions among the kept cells, counts, held-out) over the kept genes."""
    for ids, counts, heldout in _cell_blocks(rows, qc.select, mcv):
        where = qc.position[ids]
        rows_kept = where >= 0
        yield (
            where[rows_kept],
            counts[rows_kept][:, genes],
            None if heldout is None else heldout[rows_kept][:, genes],
        )


@dataclass(frozen=True)
class _Totals:
    """Pass 3's result.

    It holds library sizes over the kept genes (and of the held-out molecules),
    the training cells' gene moments for the HVGs, and each gene's stored entries.
    """

    library: np.ndarray
    heldout_library: np.ndarray | None
    moments: GeneMoments
    stored: np.ndarray
    stored_heldout: np.ndarray


def _library_pass(
    rows: CountRows,
    qc: _CellQC,
    genes: np.ndarray,
    is_train: np.ndarray,
    params: PreprocessParams,
    mcv: MCVParams | None,
) -> _Totals:
    """Run pass 3: library sizes over the kept genes, and gene moments.

    Compute library sizes over the kept genes; the moments of expm1(log1p(normalized)) over
    training cells (for :func:`seurat_hvg`); each gene's stored entries (to size pass 4).
    """
    n_cells, n_kept = len(qc.cells), int(genes.sum())
    library = np.zeros(n_cells, dtype=np.float32)
    heldout_library = np.zeros(n_cells, dtype=np.float32) if mcv is not None else None
    moments = GeneMoments(n_kept)
    stored = np.zeros(n_kept, dtype=np.int64)
    stored_heldout = np.zeros(n_kept, dtype=np.int64)
    for where, counts, heldout in _kept_blocks(rows, qc, genes, mcv):
        library[where] = _row_sums(counts)
        full = library[where] > 0
        if heldout is not None:
            heldout_library[where] = _row_sums(heldout)
            stored_heldout += np.bincount(heldout[full].indices, minlength=n_kept)
        stored += np.bincount(counts[full].indices, minlength=n_kept)
        train = full & is_train[where]
        if train.any():
            x, _ = _log_normalized(counts[train], params.target_sum)
            moments.add(np.expm1(x))
    return _Totals(library, heldout_library, moments, stored, stored_heldout)


def _hvg_pass(
    rows: CountRows,
    qc: _CellQC,
    genes: np.ndarray,
    final: np.ndarray,
    hvg: np.ndarray,
    totals: _Totals,
    params: PreprocessParams,
    mcv: MCVParams | None,
) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix | None, dict]:
    """Run pass 4: build the HVG columns of every remaining cell.

    Return (log-normalized, raw counts, held-out
    counts or None without ``mcv``, normalize_total's/log1p's uns), each built in arrays
    allocated once.
    """
    n_cells, n_hvg = int(final.sum()), int(hvg.sum())
    x_stack = _RowStack(n_cells, n_hvg, int(totals.stored[hvg].sum()))
    counts_stack = _RowStack(n_cells, n_hvg, int(totals.stored[hvg].sum()))
    heldout_stack = _RowStack(n_cells, n_hvg, int(totals.stored_heldout[hvg].sum()))
    log1p_uns: dict = {}
    for where, counts, heldout in _kept_blocks(rows, qc, genes, mcv):
        full = final[where]
        counts = counts[full]
        if counts.shape[0] == 0:
            continue
        x, log1p_uns = _log_normalized(counts, params.target_sum)
        x_stack.append(x[:, hvg])
        counts_stack.append(counts[:, hvg])
        if heldout is not None:
            heldout_stack.append(heldout[full][:, hvg])
    heldout_matrix = heldout_stack.matrix() if mcv is not None else None
    return x_stack.matrix(), counts_stack.matrix(), heldout_matrix, log1p_uns
