"""The out-of-core preprocessing: the passes over blocks of cells in order, and the result.

:func:`preprocess_rows` runs them in order: cell QC, the split and the gene filter on training
cells, library sizes and training-cell gene moments, the HVG choice (:func:`_choose_hvgs`) and
the final matrix; the passes themselves are in :mod:`scae.data._streaming`. Between passes
only per-cell and per-gene vectors are kept.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict

import anndata as ad
import numpy as np
import pandas as pd

from ..config import CLUSTER_KEY, InputError
from ..orientation import MITO_PREFIXES, Orientation
from ._streaming import _cell_pass, _CellQC, _gene_pass, _hvg_pass, _library_pass, _Totals
from .checks import _mito_mask, make_names_unique, validate_counts
from .clusters import training_clusters
from .hvg import gene_mean_std, seurat_hvg
from .mcv import HELDOUT_LAYER
from .params import SPLITS, DatasetOptions, PreprocessParams
from .readers import CountRows
from .split import labels_of, require_every_split, stratified_split

logger = logging.getLogger("scae")


def preprocess_rows(
    rows: CountRows,
    params: PreprocessParams = PreprocessParams(),
    options: DatasetOptions = DatasetOptions(),
    *,
    counts_fix: str | None = None,
    orientation: Orientation | None = None,
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
    ``orientation`` (how the input's axes were read) is recorded in ``uns['scae']``.
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
    if orientation is not None:
        adata.uns["scae"]["orientation"] = orientation.record()
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
    """Return the mitochondrial genes, or None (no prefix, or no gene matches it: warned).

    The prefix is matched case-insensitively (``MT-`` finds mouse ``mt-Co1``: logged); the
    warning names a known prefix (:data:`~scae.orientation.MITO_PREFIXES`) that the
    names do start with, e.g. R's ``MT.``.
    """
    if not mito_prefix:
        return None
    mito = _mito_mask(var_names, mito_prefix)
    if mito.any():
        as_written = var_names[mito].str.startswith(mito_prefix)
        if not as_written.all():
            logger.info(
                "%s: %d mitochondrial genes, matched case-insensitively by mito_prefix %r (%s)",
                dataset,
                int(mito.sum()),
                mito_prefix,
                ", ".join(var_names[mito][:3]),
            )
        return mito
    upper = pd.Series(var_names.astype(str)).str.upper()
    hint = " (e.g. Ensembl IDs)"
    for prefix in MITO_PREFIXES:
        found = var_names[np.asarray(upper.str.startswith(prefix.upper()))]
        if len(found):
            hint = (
                f"; {len(found)} names start with {prefix!r} ({', '.join(found[:3])}): set "
                f"datasets.{dataset}.mito_prefix: {prefix!r}"
            )
            break
    warnings.warn(
        f"dataset {dataset!r}: no gene name starts with mito_prefix {mito_prefix!r}{hint}; "
        "the mitochondrial filter is skipped",
        stacklevel=3,
    )
    return None


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
