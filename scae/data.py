"""Reading count matrices and preprocessing them without leaking held-out cells.

Preprocessing order (every step that *learns* from data sees training cells only):

1. per-cell QC (genes detected, % mitochondrial counts) – a per-cell rule, no leakage;
2. stratified train/val/test split by label (``obs['split']``);
3. gene filter ``min_cells`` counted on training cells;
4. ``normalize_total`` + ``log1p`` – per cell, no leakage;
5. highly variable genes chosen on training cells, all cells subset to them;
6. optional z-scoring parameters (gene mean/sd) from training cells, stored in ``var``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .config import CLUSTER_KEY, SUPPORTED_FORMATS, InputError, format_of
from .mcv import HELDOUT_LAYER, binomial_split

logger = logging.getLogger("scae")
# scanpy is imported inside the functions that use it: the training env (envs/torch.yaml)
# has no scanpy, yet the model API there uses this module's split and moment helpers.

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PreprocessParams:
    """Preprocessing settings, mirroring ``config['preprocess']``."""

    min_genes: int = 200
    min_cells: int = 3
    max_pct_mito: float = 5.0
    target_sum: float = 1e4
    n_top_genes: int = 2000
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 0


@dataclass(frozen=True)
class MCVParams:
    """Molecular cross-validation: the fraction of molecules kept for training, and a seed."""

    train_fraction: float = 0.9
    seed: int = 0


def read_counts(
    path: str | Path, counts: str = "X", transpose: bool = False
) -> ad.AnnData:
    """Read a dataset and return an AnnData whose ``X`` holds its raw counts as CSR.

    ``counts`` names where the counts live in an ``.h5ad``: ``"X"``, ``"raw"`` (``adata.raw.X``)
    or a layer name. ``transpose`` flips genes × cells text tables into cells × genes.
    """
    import scanpy as sc

    path = Path(path)
    kind = format_of(path)
    try:
        if kind == ".h5ad":
            adata = ad.read_h5ad(path)
        elif kind == ".h5":
            adata = sc.read_10x_h5(path)
        elif kind == "<directory>":
            adata = sc.read_10x_mtx(path, var_names="gene_symbols", cache=False)
        elif kind == ".csv":
            adata = sc.read_csv(path)
        else:
            adata = sc.read_text(path, delimiter="\t")
    except Exception as err:  # corrupt or truncated files surface as many error types
        raise InputError(
            f"{path}: could not be read as {SUPPORTED_FORMATS[kind]} ({type(err).__name__}: "
            f"{err}); check that the file is complete and of that format"
        ) from err
    if transpose:
        adata = adata.T
    if counts != "X":
        if counts == "raw":
            if adata.raw is None:
                raise InputError(f"{path}: counts: raw was configured but the file has no .raw")
            adata = ad.AnnData(
                X=adata.raw.X, obs=adata.obs, var=adata.raw.var, uns=adata.uns
            )
        elif counts in adata.layers:
            adata.X = adata.layers[counts]
        else:
            layers = ", ".join(adata.layers.keys()) or "none"
            raise InputError(
                f"{path}: counts: {counts!r} is neither 'X', 'raw' nor a layer "
                f"(layers: {layers}); set datasets.<name>.counts to where raw counts live"
            )
    adata = ad.AnnData(
        X=sp.csr_matrix(adata.X, dtype=np.float32),
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        uns=dict(adata.uns),
    )
    return adata


def validate_counts(
    X: sp.spmatrix | np.ndarray, source: str, dataset: str, require_integers: bool,
    fix: str | None = None,
) -> None:
    """Reject matrices that are not counts: NaN/inf, negatives, and (if required) fractions.

    ``fix`` is the advice the errors end with (default: the config key to change).
    """
    values = X.data if sp.issparse(X) else np.asarray(X).ravel()
    fix = fix or (f"set datasets.{dataset}.counts to the layer holding raw UMI counts "
                  "('X', 'raw' or a layer name)")
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    if n_bad:
        raise InputError(
            f"{source}: dataset {dataset!r} has {n_bad} NaN or infinite entries in its count "
            f"matrix; clean the matrix, or {fix}"
        )
    n_negative = int(np.count_nonzero(values < 0))
    fractional = int(np.count_nonzero(values != np.round(values)))
    if n_negative or (require_integers and fractional):
        raise InputError(
            f"{source}: dataset {dataset!r} is not raw counts ({n_negative} negative and "
            f"{fractional} non-integer entries); {fix}"
            + ("; count losses (poisson, nb, zinb) need integers" if require_integers else "")
        )
    if fractional:
        warnings.warn(
            f"{source}: dataset {dataset!r} has {fractional} non-integer values; they are "
            "normalized as if they were counts",
            stacklevel=2,
        )


def stratified_split(
    labels: pd.Series | None,
    n_cells: int,
    test_fraction: float,
    val_fraction: float,
    seed: int,
) -> np.ndarray:
    """Assign each cell to ``train``/``val``/``test``, stratified by ``labels`` when given.

    Within each label group of size n, round(n·test_fraction) cells go to test and
    round(n·val_fraction) to val (chosen by a seeded permutation); the rest train. Groups
    too small to spare a cell stay in train, so every label is learnt.
    """
    rng = np.random.default_rng(seed)
    split = np.full(n_cells, "train", dtype=object)
    if labels is None:
        groups = [np.arange(n_cells)]
    else:
        codes = pd.factorize(labels, sort=True)[0]
        groups = [np.flatnonzero(codes == code) for code in np.unique(codes)]
    for members in groups:
        members = rng.permutation(members)
        n_test = int(round(len(members) * test_fraction))
        n_val = int(round(len(members) * val_fraction))
        if n_test + n_val >= len(members):
            continue
        split[members[:n_test]] = "test"
        split[members[n_test : n_test + n_val]] = "val"
    return split


def gene_mean_std(X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and sample standard deviation of a sparse matrix, without densifying."""
    n = X.shape[0]
    mean = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
    mean_sq = np.asarray(X.multiply(X).mean(axis=0), dtype=np.float64).ravel()
    var = np.maximum(mean_sq - mean**2, 0) * n / max(n - 1, 1)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def _mito_mask(var_names: pd.Index, prefix: str) -> np.ndarray:
    return np.asarray(var_names.str.upper().str.startswith(prefix.upper()))


def make_names_unique(adata: ad.AnnData, axis: Literal["obs", "var"], dataset: str) -> None:
    """Make cell (``obs``) or gene (``var``) names unique in place, warning with the count.

    scanpy's ``obs_names_make_unique`` / ``var_names_make_unique`` append -1, -2, … to
    repeats. Duplicate cell names arise when 10x samples are concatenated without a key;
    every later join on the cell name (per-cell metrics, pairing) needs them unique.
    """
    names = adata.obs_names if axis == "obs" else adata.var_names
    if names.is_unique:
        return
    what = "cell" if axis == "obs" else "gene"
    warnings.warn(
        f"dataset {dataset!r}: {int(names.duplicated().sum())} duplicate {what} names made "
        f"unique (scanpy's {axis}_names_make_unique appends -1, -2, …)",
        stacklevel=3,
    )
    getattr(adata, f"{axis}_names_make_unique")()


def preprocess(
    adata: ad.AnnData,
    params: PreprocessParams = PreprocessParams(),
    *,
    dataset: str = "adata",
    layer: str | None = None,
    label_key: str | None = None,
    mito_prefix: str | None = "MT-",
    mcv: MCVParams | None = None,
    clusters: bool = False,
) -> ad.AnnData:
    """QC, split, normalize, log1p and HVG-subset a raw-count AnnData (see module docstring).

    The raw counts are read from ``adata.layers[layer]``, or ``adata.X`` when ``layer`` is
    None; ``adata`` itself is left unchanged. ``dataset`` only names the data in messages.
    Duplicate cell or gene names are made unique, with a warning that counts them.

    Returns a new AnnData of cells × HVGs with ``X`` = log1p(normalized counts) (CSR), ``layers['counts']`` =
    raw counts, ``obs['split']``, ``obs['library_size']`` (total counts over all genes kept
    after the gene filter, the normalization denominator) and ``var['train_mean']`` /
    ``var['train_std']`` of the log-normalized values over training cells.

    With ``mcv``, each QC-passing cell's molecules are split binomially (:mod:`scae.mcv`):
    everything above is computed from the training molecules c', and the held-out molecules
    c'' of the same cells and genes go to ``layers['mcv_heldout']`` and
    ``obs['mcv_library_size']``.

    With ``clusters``, ``obs['scae_cluster']`` holds Leiden clusters of the training cells
    (see :func:`training_clusters`).
    """
    import scanpy as sc

    if layer is not None and layer not in adata.layers:
        raise InputError(
            f"dataset {dataset!r}: layer {layer!r} is not in adata.layers (layers: "
            f"{', '.join(adata.layers) or 'none'}); pass layer= the layer holding raw counts, "
            "or layer=None for adata.X"
        )
    counts = adata.X if layer is None else adata.layers[layer]
    adata = ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=adata.obs.copy(),
                       var=adata.var.copy(), uns=dict(adata.uns))
    make_names_unique(adata, "var", dataset)
    make_names_unique(adata, "obs", dataset)
    n_input = adata.n_obs

    genes_per_cell = np.diff(adata.X.indptr)
    keep = genes_per_cell >= params.min_genes
    if mito_prefix:
        mito = _mito_mask(adata.var_names, mito_prefix)
        if mito.any():
            totals = np.asarray(adata.X.sum(axis=1)).ravel()
            mito_counts = np.asarray(adata.X[:, mito].sum(axis=1)).ravel()
            pct = np.divide(100 * mito_counts, totals, out=np.zeros_like(totals), where=totals > 0)
            adata.obs["pct_counts_mito"] = pct
            keep &= pct <= params.max_pct_mito
        else:
            warnings.warn(
                f"dataset {dataset!r}: no gene name starts with mito_prefix {mito_prefix!r} "
                "(e.g. Ensembl IDs); the mitochondrial filter is skipped",
                stacklevel=2,
            )
    adata = adata[keep].copy()
    if mcv is not None:
        adata.X, adata.layers[HELDOUT_LAYER] = binomial_split(
            adata.X, mcv.train_fraction, mcv.seed
        )
    zero = np.asarray(adata.X.sum(axis=1)).ravel() == 0
    if zero.any():
        logger.info("removed %d cells with zero counts", int(zero.sum()))
        adata = adata[~zero].copy()
    logger.info(
        "cell QC kept %d of %d cells (min_genes=%d, max_pct_mito=%s)",
        adata.n_obs, n_input, params.min_genes, params.max_pct_mito,
    )

    labels = None
    if label_key is not None:
        if label_key in adata.obs:
            labels = adata.obs[label_key].astype(str)
        else:
            warnings.warn(
                f"dataset {dataset!r}: label_key {label_key!r} is not a column of obs "
                f"({', '.join(map(str, adata.obs.columns)) or 'no columns'}); the split is not "
                "stratified and label metrics are skipped",
                stacklevel=2,
            )
    adata.obs["split"] = pd.Categorical(
        stratified_split(
            labels, adata.n_obs, params.test_fraction, params.val_fraction, params.split_seed
        ),
        categories=SPLITS,
    )
    counts_per_split = adata.obs["split"].value_counts()
    if (counts_per_split[list(SPLITS)] == 0).any():
        raise InputError(
            f"dataset {dataset!r}: too few cells for a train/val/test split after QC "
            f"({n_input} cells in, {adata.n_obs} kept with min_genes={params.min_genes}, "
            f"max_pct_mito={params.max_pct_mito}; split sizes {counts_per_split.to_dict()}); "
            "lower the QC thresholds in config['preprocess'] or use more cells"
        )
    is_train = (adata.obs["split"] == "train").to_numpy()

    cells_per_gene = np.bincount(adata.X[is_train].indices, minlength=adata.n_vars)
    adata = adata[:, cells_per_gene >= params.min_cells].copy()
    # A cell whose counts were all in removed genes has library size 0: no profile to learn.
    empty = np.asarray(adata.X.sum(axis=1)).ravel() == 0
    if empty.any():
        logger.info("removed %d cells with zero counts in the genes kept by min_cells=%d",
                    int(empty.sum()), params.min_cells)
        adata = adata[~empty].copy()
        is_train = is_train[~empty]
    adata.layers["counts"] = adata.X.copy()
    adata.obs["library_size"] = np.asarray(adata.X.sum(axis=1)).ravel()
    if mcv is not None:
        adata.obs["mcv_library_size"] = np.asarray(
            adata.layers[HELDOUT_LAYER].sum(axis=1)
        ).ravel()
    sc.pp.normalize_total(adata, target_sum=params.target_sum)
    sc.pp.log1p(adata)

    train = adata[is_train]
    n_top = min(params.n_top_genes, adata.n_vars)
    hvg = sc.pp.highly_variable_genes(train, n_top_genes=n_top, flavor="seurat", inplace=False)
    adata = adata[:, hvg["highly_variable"].to_numpy()].copy()
    mean, std = gene_mean_std(adata.X[is_train])
    adata.var["train_mean"] = mean
    adata.var["train_std"] = std
    adata.uns["scae"] = {
        "dataset": dataset,
        "label_key": labels.name if labels is not None else "",
        "target_sum": float(params.target_sum),
        "n_cells_input": int(n_input),
    }
    if labels is not None:
        adata.obs[label_key] = pd.Categorical(adata.obs[label_key].astype(str))
    if clusters:
        adata.obs[CLUSTER_KEY] = training_clusters(adata.X, is_train, params.split_seed)
        logger.info("%d Leiden clusters of training cells", adata.obs[CLUSTER_KEY].nunique())
    logger.info(
        "preprocessed %s: %d cells × %d HVGs, split %s",
        dataset, adata.n_obs, adata.n_vars, adata.obs["split"].value_counts().to_dict(),
    )
    return adata


def training_clusters(
    x: sp.csr_matrix, is_train: np.ndarray, seed: int, n_pcs: int = 30
) -> pd.Categorical:
    """Leiden clusters learnt from training cells only; other cells join the nearest centroid.

    PCA (``n_pcs``, fit on training cells) → kNN graph of training cells → Leiden. Validation
    and test cells are assigned to the cluster whose training centroid is closest in PCA
    space, so held-out cells never shape the clusters.
    """
    import scanpy as sc
    from sklearn.decomposition import PCA

    n_pcs = min(n_pcs, x.shape[1] - 1, int(is_train.sum()) - 1)
    pca = PCA(n_components=n_pcs, svd_solver="arpack", random_state=seed).fit(x[is_train])
    scores = pca.transform(x)
    graph = ad.AnnData(obsm={"X_pca": scores[is_train].astype(np.float32)})
    sc.pp.neighbors(graph, use_rep="X_pca", random_state=seed, method="gauss",
                    transformer="sklearn")
    sc.tl.leiden(graph, random_state=seed, flavor="igraph", n_iterations=2)
    train_labels = graph.obs["leiden"].astype(int).to_numpy()
    centroids = np.stack(
        [scores[is_train][train_labels == c].mean(axis=0) for c in range(train_labels.max() + 1)]
    )
    nearest = ((scores[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(axis=1)
    nearest[is_train] = train_labels
    return pd.Categorical(nearest.astype(str))
