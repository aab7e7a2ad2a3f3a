"""The out-of-core passes of preprocessing, each over blocks of consecutive cells.

:func:`preprocess_rows` runs them in order: cell QC (:func:`_cell_pass`), the split and the
gene filter on training cells (:func:`_gene_pass`), library sizes and training-cell gene
moments (:func:`_library_pass`), the HVG choice (:func:`_choose_hvgs`) and the final matrix
(:func:`_hvg_pass`). Each keeps only per-cell and per-gene vectors between blocks.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..config import CLUSTER_KEY, InputError
from .checks import _mito_mask, make_names_unique, validate_counts
from .clusters import training_clusters
from .hvg import GeneMoments, gene_mean_std, seurat_hvg
from .mcv import HELDOUT_LAYER, binomial_split
from .params import SPLITS, DatasetOptions, MCVParams, PreprocessParams
from .readers import CountRows
from .split import labels_of, require_every_split, stratified_split

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


def preprocess_rows(
    rows: CountRows,
    params: PreprocessParams = PreprocessParams(),
    options: DatasetOptions = DatasetOptions(),
    *,
    counts_fix: str | None = None,
) -> ad.AnnData:
    """Run :func:`preprocess` as four passes over the blocks of ``rows``.

    Only per-cell and per-gene vectors and, in the last pass, the result (cells × HVGs) are kept in
    memory.

    0. :func:`validate_counts` (``require_integers``: refuse fractions; ``counts_fix``: the
       advice its errors end with); counts with conversion noise are read rounded.
    1. QC per cell (and the molecule split); cells without counts are dropped; then the split.
    2. ``min_cells``: per gene, the training cells that store it.
    3. Library sizes over the kept genes (cells left without counts are dropped), and the
       per-gene moments of expm1(log1p(normalized)) over training cells for
       :func:`seurat_hvg`, together with each gene's stored entries (to size the result).
    4. The HVG columns of every cell: log-normalized, raw (and held-out) counts.

    ``options`` (:class:`DatasetOptions`) names the dataset and its variants. With
    ``options.needs``, the split and the HVGs are checked against what the later stages need
    (:class:`scae.sizes.SizeNeeds`) after pass 3, before the result is built. With ``thin``
    every pass after validation reads the thinned counts (a depth variant of the input).
    """
    dataset, label_key, mcv = options.dataset, options.label_key, options.mcv
    names = _validated_names(rows, options, counts_fix)
    qc = _cell_pass(rows, params, _mito_genes(names.var_names, options.mito_prefix, dataset), mcv)
    labels = labels_of(names.obs, qc.cells, label_key, dataset)
    split = pd.Categorical(
        stratified_split(
            labels, len(qc.cells), params.test_fraction, params.val_fraction, params.split_seed
        ),
        categories=SPLITS,
    )
    require_every_split(split, dataset, qc.text)  # before passes 2 and 3 over the input
    is_train = np.asarray(split == "train")
    genes = _gene_pass(rows, qc, is_train, params, mcv, dataset)
    totals = _library_pass(rows, qc, genes, is_train, params, mcv)
    final = _cells_with_counts(totals, params)
    hvg = _choose_hvgs(totals, params, int(genes.sum()), dataset, qc.text)
    _check_final_split(split[final], int(hvg.sum()), params, options, qc.text)
    adata = _result(rows, names, qc, genes, final, hvg, totals, split, labels, params, options)
    if options.clusters:
        is_train = np.asarray(adata.obs["split"] == "train")
        adata.obs[CLUSTER_KEY] = training_clusters(adata.X, is_train, params.split_seed)
        logger.info("%d Leiden clusters of training cells", adata.obs[CLUSTER_KEY].nunique())
    logger.info(
        "preprocessed %s: %d cells × %d HVGs, split %s",
        dataset,
        adata.n_obs,
        adata.n_vars,
        adata.obs["split"].value_counts().to_dict(),
    )
    return adata


def _validated_names(rows: CountRows, options: DatasetOptions, counts_fix: str | None):
    """Run pass 0: :func:`validate_counts` over ``rows``.

    The thinning of ``options.thin`` is switched on after it. Return the input's cell and gene names
    made unique, as an AnnData without X.
    """
    thin = options.thin
    validate_counts(
        rows, rows.source, options.dataset, options.require_integers or thin is not None, counts_fix
    )
    if thin is not None:
        rows.thinning = thin
        logger.info(
            "%s: molecules thinned binomially to a fraction %g (seed %d) before QC",
            options.dataset,
            thin.fraction,
            thin.seed,
        )
    names = ad.AnnData(obs=rows.obs.copy(), var=rows.var.copy(), uns=dict(rows.uns))
    make_names_unique(names, "var", options.dataset)
    make_names_unique(names, "obs", options.dataset)
    return names


def _cells_with_counts(totals: _Totals, params: PreprocessParams) -> np.ndarray:
    """Return the QC-passed cells with some counts in the genes ``min_cells`` kept.

    A cell whose counts were all in removed genes has no profile to learn.
    """
    final = totals.library > 0
    if not final.all():
        logger.info(
            "removed %d cells with zero counts in the genes kept by min_cells=%d",
            int((~final).sum()),
            params.min_cells,
        )
    return final


def _check_final_split(
    split: pd.Categorical, n_hvgs: int, params: PreprocessParams, options: DatasetOptions, qc: str
) -> None:
    """Check the split of the final cells again.

    Cells left without counts in the kept genes are gone. With ``options.needs``, also check it
    against what the later stages need.
    """
    sizes = require_every_split(split, options.dataset, qc)
    if options.needs is not None:
        options.needs.check_split(
            sizes.to_dict(), n_hvgs, options.dataset, qc, params.test_fraction, params.val_fraction
        )


def _result(
    rows: CountRows,
    names: ad.AnnData,
    qc: _CellQC,
    genes: np.ndarray,
    final: np.ndarray,
    hvg: np.ndarray,
    totals: _Totals,
    split: pd.Categorical,
    labels: pd.Series | None,
    params: PreprocessParams,
    options: DatasetOptions,
) -> ad.AnnData:
    """Run pass 4 (:func:`_hvg_pass`) and build the result.

    The result holds the kept cells × HVGs with their layers,
    per-cell annotations, training-cell gene moments and the preprocessing record in ``uns``.
    """
    mcv, label_key, thin = options.mcv, options.label_key, options.thin
    x, counts, heldout, log1p_uns = _hvg_pass(rows, qc, genes, final, hvg, totals, params, mcv)

    # annotations of the remaining cells and HVGs, subset as anndata subsets (unused
    # categories dropped)
    if qc.pct is not None:
        names.obs["pct_counts_mito"] = qc.pct
    adata = names[qc.cells[final], np.flatnonzero(genes)[hvg]].copy()
    adata.X = x
    if mcv is not None:
        adata.layers[HELDOUT_LAYER] = heldout
    adata.layers["counts"] = counts
    adata.obs["split"] = split[final]
    adata.obs["library_size"] = totals.library[final]
    if mcv is not None:
        adata.obs["mcv_library_size"] = totals.heldout_library[final]
    adata.uns.update(log1p_uns)
    is_train = np.asarray(split[final] == "train")
    mean, std = gene_mean_std(adata.X[is_train])
    adata.var["train_mean"] = mean
    adata.var["train_std"] = std
    adata.uns["scae"] = {
        "dataset": options.dataset,
        "label_key": label_key if labels is not None else "",
        "target_sum": float(params.target_sum),
        "n_cells_input": int(qc.n_input),
        "preprocess": asdict(params),
    }
    if thin is not None:
        adata.uns["scae"]["thin"] = asdict(thin)
    if labels is not None:
        adata.obs[label_key] = pd.Categorical(labels.to_numpy()[final])
    return adata


def _mito_genes(var_names: pd.Index, mito_prefix: str | None, dataset: str) -> np.ndarray | None:
    """Return the mitochondrial genes, or None (no prefix, or no gene matches it: warned)."""
    if not mito_prefix:
        return None
    mito = _mito_mask(var_names, mito_prefix)
    if mito.any():
        return mito
    warnings.warn(
        f"dataset {dataset!r}: no gene name starts with mito_prefix {mito_prefix!r} "
        "(e.g. Ensembl IDs); the mitochondrial filter is skipped",
        stacklevel=3,
    )
    return None


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


def _choose_hvgs(
    totals: _Totals, params: PreprocessParams, n_kept: int, dataset: str, qc_text: str
) -> np.ndarray:
    """Return the ``n_top_genes`` highly variable genes among the kept ones (all when fewer)."""
    n_top = min(params.n_top_genes, n_kept)
    if params.n_top_genes > n_kept:
        logger.info(
            "n_top_genes=%d is more than the %d genes kept by min_cells=%d: all of them are used",
            params.n_top_genes,
            n_kept,
            params.min_cells,
        )
    hvg = seurat_hvg(totals.moments.mean, totals.moments.variance(), n_top)
    if not hvg.any():
        raise InputError(
            f"dataset {dataset!r}: none of the {n_kept} genes kept by min_cells="
            f"{params.min_cells} varies over the training cells ({qc_text}); lower the QC "
            "thresholds in config['preprocess'] or use more cells"
        )
    return hvg


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
