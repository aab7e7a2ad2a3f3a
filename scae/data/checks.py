"""Checks of a count matrix and its names, with errors that name the file, field and fix."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..config import InputError
from .readers import CountRows

#: Stored values within this distance of an integer are counts that picked up conversion
#: noise (a float32 round trip, R, a CSV export): they are rounded, with a warning. Further
#: from an integer, a value is not a count (normalized or transformed data).
COUNT_TOLERANCE = 1e-3


#: Bins of the distances to the nearest integer (0 to 0.5) whose median an error reports.
_DISTANCE_BINS = np.linspace(0.0, 0.5, 501)


@dataclass
class _CountCheck:
    """What :func:`validate_counts` found, summed over blocks of stored values."""

    nonfinite: int = 0
    negative: int = 0
    fractional: int = 0  # further than COUNT_TOLERANCE from an integer
    noisy: int = 0  # non-integer, but within COUNT_TOLERANCE of one
    largest_noise: float = 0.0
    distances: np.ndarray | None = None  # histogram over _DISTANCE_BINS of the fractional

    @classmethod
    def of(cls, X: sp.spmatrix | np.ndarray | CountRows) -> _CountCheck:
        """Return what the stored values of ``X`` hold; a :class:`CountRows` block by block."""
        found = cls()
        if isinstance(X, CountRows):
            for _, block in X.blocks():
                found.add(block.data)
        else:
            found.add(np.asarray(X.data if sp.issparse(X) else X).ravel())
        return found

    def add(self, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        if not finite.all():  # (a copy only then: blocks of an atlas are large)
            self.nonfinite += int(np.count_nonzero(~finite))
            values = values[finite]
        nearest = np.round(values)
        distance = np.abs(values - nearest)
        # negative: nearer to a negative integer, or below 0 by more than noise
        self.negative += int(
            np.count_nonzero(nearest < 0)
            + np.count_nonzero((values < 0) & (nearest == 0) & (distance > COUNT_TOLERANCE))
        )
        noisy = (distance > 0) & (distance <= COUNT_TOLERANCE)
        self.noisy += int(np.count_nonzero(noisy))
        if noisy.any():
            self.largest_noise = max(self.largest_noise, float(distance[noisy].max()))
        far = distance[distance > COUNT_TOLERANCE]
        self.fractional += len(far)
        histogram = np.histogram(far, bins=_DISTANCE_BINS)[0]
        self.distances = histogram if self.distances is None else self.distances + histogram

    def median_distance(self) -> float:
        """Return the median distance of the fractional values to the nearest integer (to 0.001)."""
        cumulative = np.cumsum(self.distances)
        return float(_DISTANCE_BINS[1:][np.searchsorted(cumulative, cumulative[-1] / 2)])

    def distance_text(self) -> str:
        """Return how far the fractional values are from integers, for messages ("" if none)."""
        distance = ""
        if self.fractional:
            distance = (
                f"; their median distance to the nearest integer is "
                f"{self.median_distance():.3g}, beyond the {COUNT_TOLERANCE:g} of "
                "conversion noise: these look normalized or transformed, not counts"
            )
        return distance


def looks_like_counts(X: sp.spmatrix | np.ndarray) -> bool:
    """Whether ``X`` holds counts: finite non-negative integers, not all zero.

    Integers within :data:`COUNT_TOLERANCE`, as :func:`validate_counts` takes them.
    """
    values = np.asarray(X.data if sp.issparse(X) else X, dtype=np.float64).ravel()
    if not len(values) or not np.isfinite(values).all():
        return False
    distance = np.abs(values - np.round(values))
    integers = (values > -COUNT_TOLERANCE).all() and (distance <= COUNT_TOLERANCE).all()
    return bool(integers and values.max() >= 1)


def validate_counts(
    X: sp.spmatrix | np.ndarray | CountRows,
    source: str,
    dataset: str,
    require_integers: bool,
    fix: str | None = None,
) -> bool:
    """Reject matrices that are not counts: NaN/inf, negatives, and (if required) fractions.

    A value within :data:`COUNT_TOLERANCE` of an integer counts as that integer. When some
    values are such noisy integers and no value is further from one, returns True and warns
    how many and by how much: the caller rounds them (a :class:`CountRows` is marked
    ``rounded`` here, so its blocks come rounded). Values further from integers are an error
    with ``require_integers`` (count losses, molecule splitting), else a warning; either
    reports their median distance to the nearest integer, so noise can be told from
    normalized data. A :class:`CountRows` is checked one block at a time. ``fix`` is the
    advice the errors end with (default: the config key to change).
    """
    found = _CountCheck.of(X)
    fix = fix or (
        f"set datasets.{dataset}.counts to the layer holding raw UMI counts "
        "('X', 'raw' or a layer name)"
    )
    elsewhere = (
        _counts_elsewhere(X) if (found.nonfinite or found.negative or found.fractional) else ""
    )
    if elsewhere:
        fix += f" ({elsewhere})"
    if found.nonfinite:
        raise InputError(
            f"{source}: dataset {dataset!r} has {found.nonfinite} NaN or infinite entries in "
            f"its count matrix; clean the matrix, or {fix}"
        )
    distance = found.distance_text()
    if found.negative or (require_integers and found.fractional):
        raise InputError(
            f"{source}: dataset {dataset!r} is not raw counts ({found.negative} negative and "
            f"{found.fractional} non-integer entries{distance}); {fix}"
            + ("; count losses (poisson, nb, zinb) need integers" if require_integers else "")
        )
    if found.fractional:
        warnings.warn(
            f"{source}: dataset {dataset!r} has {found.fractional} non-integer values"
            f"{distance}; they are normalized as if they were counts"
            + (f"; {elsewhere}" if elsewhere else ""),
            stacklevel=2,
        )
        return False
    if found.noisy:
        warnings.warn(
            f"{source}: dataset {dataset!r}: {found.noisy} stored values are integers with "
            f"conversion noise (largest deviation {found.largest_noise:.2g}, within the "
            f"tolerance {COUNT_TOLERANCE:g}); they are rounded to the nearest integer",
            stacklevel=2,
        )
        if isinstance(X, CountRows):
            X.rounded = True
        return True
    return False


def _counts_elsewhere(X: sp.spmatrix | np.ndarray | CountRows) -> str:
    """Return where else the input holds integer counts, for a message ("" if not known)."""
    if not isinstance(X, CountRows) or X.counts_hint is None:
        return ""
    return X.counts_hint()


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


def label_strings(column: pd.Series) -> pd.Series:
    """Labels as strings, a missing one (NaN, None, pd.NA) kept missing (None), never "nan"."""
    return column.astype(str).where(column.notna(), None)
