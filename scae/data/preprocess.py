"""Preprocessing without leaking held-out cells: the public entry points.

Order (every step that *learns* from data sees training cells only):

1. per-cell QC (genes detected, % mitochondrial counts) – a per-cell rule, no leakage;
2. stratified train/val/test split by label (``obs['split']``);
3. gene filter ``min_cells`` counted on training cells;
4. ``normalize_total`` + ``log1p`` – per cell, no leakage;
5. highly variable genes chosen on training cells, all cells subset to them;
6. optional z-scoring parameters (gene mean/sd) from training cells, stored in ``var``.

:func:`preprocess` takes an in-memory AnnData, :func:`preprocess_file` a file read a block at
a time; both run the same out-of-core passes (:func:`scae.data._passes.preprocess_rows`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad

from ..config import InputError
from ..orientation import Evidence, Orientation, StoredNames, Transpose, decide
from ..sizes import SizeNeeds
from ._passes import preprocess_rows
from .params import DatasetOptions, MCVParams, PreprocessParams
from .readers import (
    CountRows,
    count_places,
    counts_hint,
    file_count_places,
    open_counts,
    rows_of,
)

logger = logging.getLogger("scae")


def orient(
    rows: CountRows, transpose: Transpose, options: DatasetOptions
) -> tuple[CountRows, Orientation]:
    """Return ``rows`` with cells as rows, and how that was decided (:mod:`.orientation`).

    The evidence is read from the stored names; transposing reads the matrix whole.

    Raises
    ------
    InputError
        When the evidence contradicts ``transpose``, or points both ways under ``auto``.
    """
    names = StoredNames(
        rows.obs.index, rows.var.index, tuple(rows.obs.columns), tuple(rows.var.columns)
    )
    evidence = Evidence.of(names, options.mito_prefix, options.label_key)
    orientation = decide(evidence, transpose, rows.source, options.dataset)
    logger.info("%s: %s", options.dataset, orientation.sentence())
    return (rows.transposed() if orientation.transposed else rows), orientation


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
    require_integers: bool = False,
    needs: SizeNeeds | None = None,
    transpose: Transpose = "auto",
) -> ad.AnnData:
    """QC, split, normalize, log1p and HVG-subset a raw-count AnnData (see module docstring).

    The raw counts are read from ``adata.layers[layer]``, or ``adata.X`` when ``layer`` is
    None; ``adata`` itself is left unchanged. ``dataset`` only names the data in messages.
    Duplicate cell or gene names are made unique, with a warning that counts them. The counts
    are checked by :func:`validate_counts` (fractions refused with ``require_integers``, as a
    count loss needs; values within :data:`COUNT_TOLERANCE` of integers are rounded).
    Cells whose ``obs[label_key]`` is missing are kept, and stay missing in the result.
    ``needs`` refuses a result too small for the later stages (:class:`scae.sizes.SizeNeeds`).
    ``transpose`` (``"auto"``, True or False) says whether ``adata`` holds genes as rows;
    ``"auto"`` decides from its names (:mod:`scae.orientation`), and the decision and
    its evidence are ``uns['scae']['orientation']``.

    Returns a new AnnData of cells × HVGs with ``X`` = log1p(normalized counts) (CSR),
    ``layers['counts']`` = raw counts, ``obs['split']``, ``obs['library_size']`` (total counts
    over all genes kept after the gene filter, the normalization denominator) and
    ``var['train_mean']`` / ``var['train_std']`` of the log-normalized values over training cells.

    With ``mcv``, each QC-passing cell's molecules are split binomially (:mod:`scae.data.mcv`):
    everything above is computed from the training molecules c', and the held-out molecules
    c'' of the same cells and genes go to ``layers['mcv_heldout']`` and
    ``obs['mcv_library_size']``.

    With ``clusters``, ``obs['scae_cluster']`` holds Leiden clusters of the training cells
    (see :func:`training_clusters`).

    The same passes as :func:`preprocess_rows` over an input on disk (:func:`open_counts`).
    """
    if layer is not None and layer not in adata.layers:
        raise InputError(
            f"dataset {dataset!r}: layer {layer!r} is not in adata.layers (layers: "
            f"{', '.join(adata.layers) or 'none'}); pass layer= the layer holding raw counts, "
            "or layer=None for adata.X"
        )
    fix = (
        "pass layer= the layer holding raw UMI counts (layer=None: adata.X), or give "
        "scae.preprocess the raw-count AnnData"
    )
    source = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    options = DatasetOptions(
        dataset=dataset,
        label_key=label_key,
        mito_prefix=mito_prefix,
        mcv=mcv,
        clusters=clusters,
        require_integers=require_integers,
        needs=needs,
    )
    rows, orientation = orient(rows_of(adata, source, layer), transpose, options)
    rows.counts_hint = lambda: counts_hint(
        count_places(adata), layer or "X", lambda place: f"pass layer={place!r}"
    )
    return preprocess_rows(rows, params, options, counts_fix=fix, orientation=orientation)


def preprocess_file(
    path: str | Path,
    params: PreprocessParams = PreprocessParams(),
    options: DatasetOptions = DatasetOptions(),
    *,
    counts: str = "X",
    transpose: Transpose = "auto",
) -> ad.AnnData:
    """Preprocess the dataset at ``path``: what the workflow's preprocess job runs.

    :func:`preprocess_rows` of the dataset, read as :func:`open_counts` does (``.h5ad`` and
    10x ``.h5`` a block of cells at a time) and oriented by :func:`orient`. Every
    :class:`InputError` names ``options.dataset``; one about counts that are not counts also
    names the places of the file that hold integer counts.
    """
    try:
        with open_counts(path, counts=counts) as stored:
            rows, orientation = orient(stored, transpose, options)
            rows.counts_hint = lambda: counts_hint(
                file_count_places(path),
                counts,
                lambda place: f"set datasets.{options.dataset}.counts: {place}",
            )
            return preprocess_rows(rows, params, options, orientation=orientation)
    except InputError as err:
        if f"dataset {options.dataset!r}" in str(err):
            raise
        raise InputError(f"dataset {options.dataset!r}: {err}") from err
