"""The train/validation/test split of cells, stratified by label."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..config import InputError
from .checks import label_strings
from .params import SPLITS


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


def require_every_split(split: pd.Categorical, dataset: str, qc_text: str) -> pd.Series:
    """Cells per split; an InputError quoting the QC when a split is empty."""
    sizes = pd.Series(split).value_counts()
    if (sizes[list(SPLITS)] == 0).any():
        raise InputError(
            f"dataset {dataset!r}: too few cells for a train/val/test split after QC "
            f"({qc_text}; split sizes {sizes.to_dict()}); "
            "lower the QC thresholds in config['preprocess'] or use more cells"
        )
    return sizes


def labels_of(
    obs: pd.DataFrame, cells: np.ndarray, label_key: str | None, dataset: str
) -> pd.Series | None:
    """Return the labels of the QC-passing ``cells`` (:func:`label_strings`).

    None (with a warning) when ``obs`` has no such column or no cell a label.
    """
    if label_key is None:
        return None
    if label_key not in obs:
        warnings.warn(
            f"dataset {dataset!r}: label_key {label_key!r} is not a column of obs "
            f"({', '.join(map(str, obs.columns)) or 'no columns'}); the split is "
            "not stratified and label metrics are skipped",
            stacklevel=3,
        )
        return None
    column = obs[label_key].iloc[cells]
    missing = column.isna().to_numpy()
    if missing.all():
        warnings.warn(
            f"dataset {dataset!r}: obs[{label_key!r}] has no labels (missing for all "
            f"{len(cells)} cells that passed QC); as without a label_key, the split is not "
            "stratified and label metrics are skipped",
            stacklevel=3,
        )
        return None
    if missing.any():
        warnings.warn(
            f"dataset {dataset!r}: {int(missing.sum())} of {len(cells)} cells that passed QC "
            f"have no label in obs[{label_key!r}]; they are trained on and reconstructed, "
            "the split stratifies them as one group of their own, and label metrics are "
            "computed on labelled cells only",
            stacklevel=3,
        )
    return label_strings(column).rename(label_key)
