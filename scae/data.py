"""Reading count matrices and preprocessing them without leaking held-out cells.

Preprocessing order (every step that *learns* from data sees training cells only):

1. per-cell QC (genes detected, % mitochondrial counts) – a per-cell rule, no leakage;
2. stratified train/val/test split by label (``obs['split']``);
3. gene filter ``min_cells`` counted on training cells;
4. ``normalize_total`` + ``log1p`` – per cell, no leakage;
5. highly variable genes chosen on training cells, all cells subset to them;
6. optional z-scoring parameters (gene mean/sd) from training cells, stored in ``var``.

Out of core: every step is a pass over blocks of consecutive cells (:class:`CountRows`,
at most :data:`CHUNK_NNZ` stored entries each) that keeps only per-cell and per-gene
vectors, so memory scales with the result (cells × HVGs), not with the input. ``.h5ad`` and
Cell Ranger ``.h5`` inputs are read a block at a time with h5py (:func:`open_counts`); an
in-memory AnnData (:func:`preprocess`) takes the same passes over its own matrix.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .config import CLUSTER_KEY, SUPPORTED_FORMATS, InputError, format_of
from .mcv import HELDOUT_LAYER, binomial_split, binomial_thin
from .sizes import SizeNeeds

logger = logging.getLogger("scae")
# scanpy is imported inside the functions that use it: the training env (envs/torch.yaml)
# has no scanpy, yet the model API there uses this module's split and moment helpers.

SPLITS = ("train", "val", "test")
#: Stored entries per block of cells read at once (32 MB of float32 values plus as much for
#: their column indices): bounds the working memory of every preprocessing pass.
CHUNK_NNZ = 1 << 23


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


#: Entropy that keeps the thinning's random stream apart from the molecule split's
#: (``mcv.seed``): a thinned dataset's MCV variant draws both, often with the same seed.
THINNING_STREAM = 0x7468696E


@dataclass(frozen=True)
class Thinning:
    """A depth variant of a dataset: each molecule kept with probability ``fraction``
    (:func:`scae.mcv.binomial_thin`, seeded by ``seed``), before QC."""

    fraction: float
    seed: int = 0


def _unreadable(path: Path, kind: str, err: BaseException) -> InputError:
    """The error for a file its reader cannot parse: corrupt, truncated or of another format."""
    return InputError(
        f"{path}: could not be read as {SUPPORTED_FORMATS[kind]} ({type(err).__name__}: "
        f"{err}); check that the file is complete and of that format"
    )


def _no_raw(path: Path) -> InputError:
    return InputError(f"{path}: counts: raw was configured but the file has no .raw")


def _no_layer(path: Path, counts: str, layers) -> InputError:
    return InputError(
        f"{path}: counts: {counts!r} is neither 'X', 'raw' nor a layer "
        f"(layers: {', '.join(layers) or 'none'}); set datasets.<name>.counts to where raw "
        "counts live"
    )


def read_counts(
    path: str | Path, counts: str = "X", transpose: bool = False
) -> ad.AnnData:
    """Read a dataset whole and return an AnnData whose ``X`` holds its raw counts as CSR.

    ``counts`` names where the counts live in an ``.h5ad``: ``"X"``, ``"raw"`` (``adata.raw.X``)
    or a layer name. ``transpose`` flips genes × cells text tables into cells × genes.
    :func:`open_counts` reads ``.h5ad`` and 10x ``.h5`` files a block of cells at a time instead.
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
        raise _unreadable(path, kind, err) from err
    if transpose:
        adata = adata.T
    if counts != "X":
        if counts == "raw":
            if adata.raw is None:
                raise _no_raw(path)
            adata = ad.AnnData(
                X=adata.raw.X, obs=adata.obs, var=adata.raw.var, uns=adata.uns
            )
        elif counts in adata.layers:
            adata.X = adata.layers[counts]
        else:
            raise _no_layer(path, counts, adata.layers.keys())
    adata = ad.AnnData(
        X=sp.csr_matrix(adata.X, dtype=np.float32),
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        uns=dict(adata.uns),
    )
    return adata


class CountRows:
    """A cells × genes count matrix that preprocessing reads one block of cells at a time.

    ``obs``, ``var`` and ``uns`` are the input's annotations (small); the matrix is only
    reached through :meth:`read` of consecutive rows, as float32 CSR. ``source`` names the
    input in messages.
    """

    def __init__(self, obs: pd.DataFrame, var: pd.DataFrame, uns: dict, source: str) -> None:
        self.obs, self.var, self.uns, self.source = obs, var, uns, source

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.obs), len(self.var)

    def row_nnz(self) -> np.ndarray:
        """Stored entries per row (what the blocks are sized by)."""
        raise NotImplementedError

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as float32 CSR."""
        raise NotImplementedError

    #: Whether :meth:`blocks` rounds every value to the nearest integer (and drops the zeros
    #: that makes): set by :func:`validate_counts` for counts with conversion noise.
    rounded: bool = False
    #: Whether :meth:`blocks` thins the counts (a depth variant): set by :func:`preprocess_rows`
    #: after validation, so the checks see the counts as stored.
    thinning: Thinning | None = None

    def blocks(self, max_nnz: int | None = None) -> Iterator[tuple[int, sp.csr_matrix]]:
        """(first row, its block) over all rows, in order; a block holds at most ``max_nnz``
        (default :data:`CHUNK_NNZ`) stored entries, or one row if a single row holds more."""
        max_nnz = max_nnz or CHUNK_NNZ
        ends = np.cumsum(self.row_nnz(), dtype=np.int64)
        start, n_rows = 0, self.shape[0]
        # One generator per pass: every pass over the rows sees the same thinned counts.
        thin_rng = (np.random.default_rng([THINNING_STREAM, self.thinning.seed])
                    if self.thinning else None)
        while start < n_rows:
            before = ends[start - 1] if start else 0
            stop = int(np.searchsorted(ends, before + max_nnz, side="right"))
            stop = min(max(stop, start + 1), n_rows)
            block = self.read(start, stop)
            if self.rounded:
                block = round_counts(block)
            if thin_rng is not None:
                block = binomial_thin(block, self.thinning.fraction, thin_rng)
            yield start, block
            start = stop


class MatrixRows(CountRows):
    """Rows of a matrix already in memory (an AnnData's ``X`` or layer)."""

    def __init__(self, X: sp.spmatrix | np.ndarray, obs: pd.DataFrame, var: pd.DataFrame,
                 uns: dict, source: str) -> None:
        super().__init__(obs, var, uns, source)
        self.X = sp.csr_matrix(X, dtype=np.float32)

    def row_nnz(self) -> np.ndarray:
        return np.diff(self.X.indptr)

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        return self.X[start:stop]


class HDF5Rows(CountRows):
    """Rows of a matrix in an open HDF5 file, read with h5py one block at a time.

    ``element`` is a dense dataset, or a group of ``data``/``indices``/``indptr`` over rows:
    an ``.h5ad`` CSR matrix, or a 10x ``.h5`` matrix, whose genes × cells CSC is the same
    three arrays as cells × genes CSR. Only ``indptr`` (one integer per cell) is held in
    memory. ``columns`` keeps a subset of the stored columns (10x: gene-expression features).
    """

    def __init__(self, element: h5py.Group | h5py.Dataset, n_stored_columns: int,
                 obs: pd.DataFrame, var: pd.DataFrame, uns: dict, source: str,
                 columns: np.ndarray | None = None) -> None:
        super().__init__(obs, var, uns, source)
        self.element, self.n_stored, self.columns = element, n_stored_columns, columns
        self.dense = isinstance(element, h5py.Dataset)
        self.indptr = None if self.dense else element["indptr"][:].astype(np.int64)

    def row_nnz(self) -> np.ndarray:
        if self.dense:
            return np.full(self.shape[0], self.n_stored, dtype=np.int64)
        return np.diff(self.indptr)

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        try:
            if self.dense:
                block = sp.csr_matrix(np.asarray(self.element[start:stop], dtype=np.float32))
            else:
                first, last = self.indptr[start], self.indptr[stop]
                block = sp.csr_matrix(
                    (self.element["data"][first:last].astype(np.float32, copy=False),
                     self.element["indices"][first:last], self.indptr[start : stop + 1] - first),
                    shape=(stop - start, self.n_stored),
                )
        except (OSError, KeyError, ValueError) as err:  # truncated or corrupt on disk
            kind = format_of(self.source)
            raise _unreadable(Path(self.source), kind, err) from err
        return block if self.columns is None else block[:, self.columns]


def rows_of(adata: ad.AnnData, source: str, layer: str | None = None) -> MatrixRows:
    """An in-memory AnnData's counts (``X``, or ``layers[layer]``) as :class:`CountRows`."""
    counts = adata.X if layer is None else adata.layers[layer]
    return MatrixRows(counts, adata.obs.copy(), adata.var.copy(), dict(adata.uns), source)


def _h5ad_rows(file: h5py.File, path: Path, counts: str) -> HDF5Rows | None:
    """The counts of an ``.h5ad`` as :class:`HDF5Rows`; None when they are stored column-wise
    (CSC) or in a layout this reader does not know (e.g. anndata < 0.7)."""
    from anndata.io import read_elem

    if counts == "X":
        element, var = file["X"], read_elem(file["var"])
    elif counts == "raw":
        if "raw" not in file:
            raise _no_raw(path)
        element, var = file["raw/X"], read_elem(file["raw/var"])
    else:
        layers = file["layers"] if "layers" in file else {}
        if counts not in layers:
            raise _no_layer(path, counts, layers.keys())
        element, var = layers[counts], read_elem(file["var"])
    obs = read_elem(file["obs"])
    uns = read_elem(file["uns"]) if "uns" in file else {}
    if isinstance(element, h5py.Dataset) and element.ndim == 2:
        return HDF5Rows(element, element.shape[1], obs, var, uns, str(path))
    if element.attrs.get("encoding-type") != "csr_matrix":
        return None
    return HDF5Rows(element, len(var), obs, var, uns, str(path))


def _tenx_rows(file: h5py.File, path: Path) -> HDF5Rows | None:
    """A Cell Ranger ≥ 3 ``.h5`` as :class:`HDF5Rows` with the annotations and the
    gene-expression features that ``scanpy.read_10x_h5`` gives; None for the legacy
    (Cell Ranger 2) layout."""
    if "matrix" not in file:
        return None
    matrix = file["matrix"]
    features = matrix["features"]

    def text(dataset: h5py.Dataset) -> np.ndarray:
        return dataset[:].astype(str)

    obs = pd.DataFrame(index=pd.Index(text(matrix["barcodes"])))
    if "filtered_barcodes" in matrix:
        obs["filtered_barcodes"] = matrix["filtered_barcodes"][:].astype(bool)
    columns = {"gene_ids": text(features["id"])}
    if "gene_id" in features:  # a probe-barcode matrix
        columns = {"gene_ids": text(features["gene_id"]), "probe_ids": text(features["id"])}
    columns["feature_types"] = text(features["feature_type"])
    columns |= {
        name: item[:].astype(bool if item.dtype.kind == "b" else str)
        for name, item in features.items()
        if isinstance(item, h5py.Dataset)
        and name not in ("name", "feature_type", "id", "gene_id", "_all_tag_keys")
    }
    var = pd.DataFrame(columns, index=pd.Index(text(features["name"])))
    expression = (var["feature_types"] == "Gene Expression").to_numpy()
    keep = None if expression.all() else expression
    if keep is not None:
        found = var["feature_types"].value_counts()
        logger.info("%s: features by type: %s; only the %d Gene Expression features are used",
                    path, ", ".join(f"{n} {kind}" for kind, n in found.items()),
                    int(expression.sum()))
    return HDF5Rows(matrix, len(var), obs, var if keep is None else var[keep], {}, str(path),
                    columns=keep)


@contextlib.contextmanager
def open_counts(
    path: str | Path, counts: str = "X", transpose: bool = False
) -> Iterator[CountRows]:
    """The raw counts of the dataset at ``path`` as :class:`CountRows`, with the annotations
    :func:`read_counts` gives.

    ``.h5ad`` files (CSR or dense counts in ``X``, a layer or ``raw``) and Cell Ranger ≥ 3
    ``.h5`` files stay on disk and are read a block of cells at a time with h5py while the
    context is open. Everything else — text tables, 10x mtx directories, legacy 10x ``.h5``,
    CSC-stored ``.h5ad`` matrices and transposed inputs — is read whole by :func:`read_counts`.
    """
    path = Path(path)
    kind = format_of(path)
    streamed = kind in (".h5ad", ".h5") and not transpose and path.suffix.lower() != ".gz"
    file = rows = None
    if streamed:
        try:
            file = h5py.File(path, "r")
            rows = _h5ad_rows(file, path, counts) if kind == ".h5ad" else _tenx_rows(file, path)
        except InputError:
            raise
        except Exception as err:  # corrupt or truncated files surface as many error types
            raise _unreadable(path, kind, err) from err
    try:
        if rows is None:
            if streamed:
                logger.info("%s: this matrix layout is read whole, not in blocks", path)
            rows = rows_of(read_counts(path, counts, transpose), str(path))
        yield rows
    finally:
        if file is not None:
            file.close()


def count_input_size(path: str | Path, counts: str = "X") -> tuple[int, int, int] | None:
    """(cells, genes, stored entries) of an ``.h5ad`` (CSR counts) or Cell Ranger ≥ 3 ``.h5``,
    from its metadata alone (nothing is read but a few attributes and shapes); None for
    other formats and layouts, or a file that cannot be read."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as file:
            if format_of(path) == ".h5":
                n_genes, n_cells = file["matrix/shape"][:]
                return int(n_cells), int(n_genes), int(file["matrix/data"].shape[0])
            element = {"X": "X", "raw": "raw/X"}.get(counts, f"layers/{counts}")
            element = file[element]
            if element.attrs.get("encoding-type") != "csr_matrix":
                return None
            n_cells, n_genes = element.attrs["shape"]
            return int(n_cells), int(n_genes), int(element["data"].shape[0])
    except (OSError, KeyError, ValueError, InputError):
        return None


def preprocess_mem_mb(path: str | Path, counts: str, n_top_genes: int, mcv: bool) -> int:
    """Memory (MB) to request for preprocessing the dataset at ``path``.

    Streamed inputs (see :func:`count_input_size`): 1.5 GB for the interpreter, scanpy and
    the blocks being processed, plus the result — X and ``layers['counts']`` (and, with
    ``mcv``, the held-out molecules): 8 bytes per stored entry each — for an estimated
    nnz × min(1, 2 · n_top_genes / genes) entries (HVGs hold 0.9–1.4× their share of the
    entries in pbmc3k and zheng17) and 200 bytes of annotations per cell. Other inputs are
    read whole: 2 GB + 20 × their size on disk.
    """
    size = count_input_size(path, counts)
    if size is None:
        return int(2000 + 20 * Path(path).stat().st_size / 2**20)
    n_cells, n_genes, nnz = size
    entries = nnz * min(1.0, 2 * n_top_genes / max(n_genes, 1))
    per_entry = 8 * (3 if mcv else 2)
    return int(1500 + (entries * per_entry + 200 * n_cells) / 2**20)


#: Stored values within this distance of an integer are counts that picked up conversion
#: noise (a float32 round trip, R, a CSV export): they are rounded, with a warning. Further
#: from an integer, a value is not a count (normalized or transformed data).
COUNT_TOLERANCE = 1e-3
#: Bins of the distances to the nearest integer (0 to 0.5) whose median an error reports.
_DISTANCE_BINS = np.linspace(0.0, 0.5, 501)


def round_counts(X: sp.spmatrix | np.ndarray) -> sp.spmatrix | np.ndarray:
    """A copy of ``X`` with every value rounded to the nearest integer (sparse: the zeros that
    makes are dropped, since noise around 0 would otherwise count as a detected gene)."""
    if not sp.issparse(X):
        return np.round(X)
    X = X.copy()
    np.round(X.data, out=X.data)
    X.eliminate_zeros()
    return X


@dataclass
class _CountCheck:
    """What :func:`validate_counts` found, summed over blocks of stored values."""

    nonfinite: int = 0
    negative: int = 0
    fractional: int = 0  # further than COUNT_TOLERANCE from an integer
    noisy: int = 0  # non-integer, but within COUNT_TOLERANCE of one
    largest_noise: float = 0.0
    distances: np.ndarray | None = None  # histogram over _DISTANCE_BINS of the fractional

    def add(self, values: np.ndarray) -> None:
        finite = np.isfinite(values)
        if not finite.all():  # (a copy only then: blocks of an atlas are large)
            self.nonfinite += int(np.count_nonzero(~finite))
            values = values[finite]
        nearest = np.round(values)
        distance = np.abs(values - nearest)
        # negative: nearer to a negative integer, or below 0 by more than noise
        self.negative += int(np.count_nonzero(nearest < 0) + np.count_nonzero(
            (values < 0) & (nearest == 0) & (distance > COUNT_TOLERANCE)))
        noisy = (distance > 0) & (distance <= COUNT_TOLERANCE)
        self.noisy += int(np.count_nonzero(noisy))
        if noisy.any():
            self.largest_noise = max(self.largest_noise, float(distance[noisy].max()))
        far = distance[distance > COUNT_TOLERANCE]
        self.fractional += len(far)
        histogram = np.histogram(far, bins=_DISTANCE_BINS)[0]
        self.distances = histogram if self.distances is None else self.distances + histogram

    def median_distance(self) -> float:
        """The median distance of the fractional values to the nearest integer (to 0.001)."""
        cumulative = np.cumsum(self.distances)
        return float(_DISTANCE_BINS[1:][np.searchsorted(cumulative, cumulative[-1] / 2)])


def validate_counts(
    X: sp.spmatrix | np.ndarray | CountRows, source: str, dataset: str, require_integers: bool,
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
    found = _CountCheck()
    if isinstance(X, CountRows):
        for _, block in X.blocks():
            found.add(block.data)
    else:
        found.add(np.asarray(X.data if sp.issparse(X) else X).ravel())
    fix = fix or (f"set datasets.{dataset}.counts to the layer holding raw UMI counts "
                  "('X', 'raw' or a layer name)")
    if found.nonfinite:
        raise InputError(
            f"{source}: dataset {dataset!r} has {found.nonfinite} NaN or infinite entries in "
            f"its count matrix; clean the matrix, or {fix}"
        )
    distance = ""
    if found.fractional:
        distance = (f"; their median distance to the nearest integer is "
                    f"{found.median_distance():.3g}, beyond the {COUNT_TOLERANCE:g} of "
                    "conversion noise: these look normalized or transformed, not counts")
    if found.negative or (require_integers and found.fractional):
        raise InputError(
            f"{source}: dataset {dataset!r} is not raw counts ({found.negative} negative and "
            f"{found.fractional} non-integer entries{distance}); {fix}"
            + ("; count losses (poisson, nb, zinb) need integers" if require_integers else "")
        )
    if found.fractional:
        warnings.warn(
            f"{source}: dataset {dataset!r} has {found.fractional} non-integer values"
            f"{distance}; they are normalized as if they were counts",
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


class GeneMoments:
    """Per-gene count, mean and sum of squared deviations M2 of sparse rows added block by
    block, combined as Chan, Golub & LeVeque (1979) do (stable at any number of cells).

    A block b of n_b cells has mean_b = Σx / n_b and M2_b = Σ_stored (x − mean_b)² +
    (n_b − stored) · mean_b²; merged into (n_a, mean_a, M2_a): n = n_a + n_b,
    δ = mean_b − mean_a, mean = mean_a + δ·n_b/n, M2 = M2_a + M2_b + δ²·n_a·n_b/n.
    """

    def __init__(self, n_genes: int) -> None:
        self.n = 0
        self.mean = np.zeros(n_genes)
        self.m2 = np.zeros(n_genes)

    def add(self, X: sp.csr_matrix) -> GeneMoments:
        n_b = X.shape[0]
        if n_b == 0:
            return self
        n_genes = len(self.mean)
        values = X.data.astype(np.float64)
        mean_b = np.bincount(X.indices, values, minlength=n_genes) / n_b
        stored = np.bincount(X.indices, minlength=n_genes)
        values -= mean_b[X.indices]
        m2_b = np.bincount(X.indices, values * values, minlength=n_genes)
        m2_b += (n_b - stored) * mean_b**2
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 += m2_b + delta**2 * (self.n * n_b / n)
        self.mean += delta * (n_b / n)
        self.n = n
        return self

    def variance(self) -> np.ndarray:
        """The unbiased variance M2 / (n − 1) (M2 / n for a single cell, as scanpy)."""
        return self.m2 / (self.n - 1 if self.n > 1 else max(self.n, 1))


def gene_mean_std(X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and sample standard deviation of a sparse matrix, without densifying."""
    moments = GeneMoments(X.shape[1]).add(sp.csr_matrix(X))
    return moments.mean.astype(np.float32), np.sqrt(moments.variance()).astype(np.float32)


def seurat_hvg(mean: np.ndarray, var: np.ndarray, n_top: int, n_bins: int = 20) -> np.ndarray:
    """The genes ``scanpy.pp.highly_variable_genes(flavor="seurat", n_top_genes=n_top)``
    selects, from each gene's mean m and unbiased variance v of expm1(X) (the normalized
    counts), so that the moments can be accumulated out of core.

    Dispersion d = log(v / m) (m = 0 counts as 1e-12; d = log 0 is NaN); genes fall into
    ``n_bins`` equal-width bins of log1p(m); the normalized dispersion is
    z = (d − mean of d in the bin) / (sd of d in the bin), or z = d / d for a bin of one
    gene. The n_top genes of highest z are kept (all genes tied at the cut-off; never NaN).
    """
    mean = np.where(mean == 0, 1e-12, mean)
    dispersion = var / mean
    dispersion[dispersion == 0] = np.nan
    dispersion = np.log(dispersion)
    bins = pd.cut(pd.Series(np.log1p(mean)), bins=n_bins)
    stats = pd.Series(dispersion).groupby(bins, observed=True).agg(["mean", "std"])
    single = stats["std"].isnull()
    stats.loc[single, "std"] = stats.loc[single, "mean"]
    stats.loc[single, "mean"] = 0.0
    per_gene = stats.loc[bins]
    normalized = (dispersion - per_gene["mean"].to_numpy()) / per_gene["std"].to_numpy()
    ranked = np.sort(normalized[~np.isnan(normalized)])[::-1]
    if len(ranked) == 0 or n_top < 1:  # no gene varies: nothing to select
        return np.zeros(len(mean), dtype=bool)
    cutoff = ranked[min(n_top, len(ranked)) - 1]
    # NaN (no dispersion) never selected; ±inf (a bin of equal dispersions, up to rounding)
    # compared as they are, so a cut-off of +inf still selects its own genes
    return np.where(np.isnan(normalized), -np.inf, normalized) >= cutoff


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
    require_integers: bool = False,
    needs: SizeNeeds | None = None,
) -> ad.AnnData:
    """QC, split, normalize, log1p and HVG-subset a raw-count AnnData (see module docstring).

    The raw counts are read from ``adata.layers[layer]``, or ``adata.X`` when ``layer`` is
    None; ``adata`` itself is left unchanged. ``dataset`` only names the data in messages.
    Duplicate cell or gene names are made unique, with a warning that counts them. The counts
    are checked by :func:`validate_counts` (fractions refused with ``require_integers``, as a
    count loss needs; values within :data:`COUNT_TOLERANCE` of integers are rounded).
    Cells whose ``obs[label_key]`` is missing are kept, and stay missing in the result.
    ``needs`` refuses a result too small for the later stages (:class:`scae.sizes.SizeNeeds`).

    Returns a new AnnData of cells × HVGs with ``X`` = log1p(normalized counts) (CSR),
    ``layers['counts']`` = raw counts, ``obs['split']``, ``obs['library_size']`` (total counts
    over all genes kept after the gene filter, the normalization denominator) and
    ``var['train_mean']`` / ``var['train_std']`` of the log-normalized values over training cells.

    With ``mcv``, each QC-passing cell's molecules are split binomially (:mod:`scae.mcv`):
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
    fix = ("pass layer= the layer holding raw UMI counts (layer=None: adata.X), or give "
           "scae.preprocess the raw-count AnnData")
    source = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    return preprocess_rows(rows_of(adata, source, layer), params, dataset=dataset,
                           label_key=label_key, mito_prefix=mito_prefix, mcv=mcv,
                           clusters=clusters, require_integers=require_integers, needs=needs,
                           counts_fix=fix)


def preprocess_file(
    path: str | Path,
    params: PreprocessParams = PreprocessParams(),
    *,
    dataset: str,
    counts: str = "X",
    transpose: bool = False,
    label_key: str | None = None,
    mito_prefix: str | None = "MT-",
    mcv: MCVParams | None = None,
    clusters: bool = False,
    require_integers: bool = False,
    needs: SizeNeeds | None = None,
    thin: Thinning | None = None,
) -> ad.AnnData:
    """:func:`preprocess_rows` of the dataset at ``path`` (read as :func:`open_counts` does,
    ``.h5ad`` and 10x ``.h5`` a block of cells at a time): what the workflow's preprocess
    job runs. Every :class:`InputError` names ``dataset``."""
    try:
        with open_counts(path, counts=counts, transpose=transpose) as rows:
            return preprocess_rows(rows, params, dataset=dataset, label_key=label_key,
                                   mito_prefix=mito_prefix, mcv=mcv, clusters=clusters,
                                   require_integers=require_integers, needs=needs,
                                   thin=thin)
    except InputError as err:
        if f"dataset {dataset!r}" in str(err):
            raise
        raise InputError(f"dataset {dataset!r}: {err}") from err


def _cell_blocks(
    rows: CountRows, select: Callable[[int, sp.csr_matrix], np.ndarray], mcv: MCVParams | None
) -> Iterator[tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix | None]]:
    """(input row numbers, counts, held-out molecules or None) of the rows ``select`` keeps,
    block by block. With ``mcv`` the counts are the training molecules c' of
    :func:`scae.mcv.binomial_split`, drawn in row order from one generator per pass, so every
    pass (and the whole matrix at once) sees the same c' and c''."""
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
    """A CSR matrix filled block of rows by block of rows into arrays allocated once for its
    known number of stored entries (at most), so the result is never held twice."""

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
        return sp.csr_matrix((self.data[: self.nnz], self.indices[: self.nnz], self.indptr),
                             shape=self.shape, copy=False)


def _log_normalized(counts: sp.csr_matrix, target_sum: float) -> tuple[sp.csr_matrix, dict]:
    """scanpy's normalize_total + log1p of a block of cells (both act cell by cell), and the
    ``uns`` entry log1p leaves."""
    import scanpy as sc

    block = ad.AnnData(X=counts.copy())
    sc.pp.normalize_total(block, target_sum=target_sum)
    sc.pp.log1p(block)
    return block.X, dict(block.uns)


def _require_every_split(split: pd.Categorical, dataset: str, qc_text: str) -> pd.Series:
    """Cells per split; an InputError quoting the QC when a split is empty."""
    sizes = pd.Series(split).value_counts()
    if (sizes[list(SPLITS)] == 0).any():
        raise InputError(
            f"dataset {dataset!r}: too few cells for a train/val/test split after QC "
            f"({qc_text}; split sizes {sizes.to_dict()}); "
            "lower the QC thresholds in config['preprocess'] or use more cells"
        )
    return sizes


def label_strings(column: pd.Series) -> pd.Series:
    """Labels as strings, a missing one (NaN, None, pd.NA) kept missing (None), never "nan"."""
    return column.astype(str).where(column.notna(), None)


def _labels_of(
    obs: pd.DataFrame, cells: np.ndarray, label_key: str | None, dataset: str
) -> pd.Series | None:
    """The labels of the QC-passing ``cells`` (:func:`label_strings`), or None (with a
    warning) when ``obs`` has no such column or no cell a label."""
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


def preprocess_rows(
    rows: CountRows,
    params: PreprocessParams = PreprocessParams(),
    *,
    dataset: str = "adata",
    label_key: str | None = None,
    mito_prefix: str | None = "MT-",
    mcv: MCVParams | None = None,
    clusters: bool = False,
    require_integers: bool = False,
    needs: SizeNeeds | None = None,
    counts_fix: str | None = None,
    thin: Thinning | None = None,
) -> ad.AnnData:
    """:func:`preprocess` as four passes over the blocks of ``rows``; only per-cell and
    per-gene vectors and, in the last pass, the result (cells × HVGs) are kept in memory.

    0. :func:`validate_counts` (``require_integers``: refuse fractions; ``counts_fix``: the
       advice its errors end with); counts with conversion noise are read rounded.
    1. QC per cell (and the molecule split); cells without counts are dropped; then the split.
    2. ``min_cells``: per gene, the training cells that store it.
    3. Library sizes over the kept genes (cells left without counts are dropped), and the
       per-gene moments of expm1(log1p(normalized)) over training cells for
       :func:`seurat_hvg`, together with each gene's stored entries (to size the result).
    4. The HVG columns of every cell: log-normalized, raw (and held-out) counts.

    With ``needs``, the split and the HVGs are checked against what the later stages need
    (:class:`scae.sizes.SizeNeeds`) after pass 3, before the result is built. With ``thin``
    every pass after validation reads the thinned counts (a depth variant of the input).
    """
    validate_counts(rows, rows.source, dataset, require_integers or thin is not None,
                    counts_fix)
    if thin is not None:
        rows.thinning = thin
        logger.info("%s: molecules thinned binomially to a fraction %g (seed %d) before QC",
                    dataset, thin.fraction, thin.seed)
    names = ad.AnnData(obs=rows.obs.copy(), var=rows.var.copy(), uns=dict(rows.uns))
    make_names_unique(names, "var", dataset)
    make_names_unique(names, "obs", dataset)
    qc = _cell_pass(rows, params, _mito_genes(names.var_names, mito_prefix, dataset), mcv)
    labels = _labels_of(names.obs, qc.cells, label_key, dataset)
    split = pd.Categorical(
        stratified_split(labels, len(qc.cells), params.test_fraction, params.val_fraction,
                         params.split_seed),
        categories=SPLITS,
    )
    _require_every_split(split, dataset, qc.text)  # before passes 2 and 3 over the input
    is_train = np.asarray(split == "train")
    genes = _gene_pass(rows, qc, is_train, params, mcv, dataset)
    totals = _library_pass(rows, qc, genes, is_train, params, mcv)
    final = totals.library > 0
    if not final.all():
        # a cell whose counts were all in removed genes has no profile to learn
        logger.info("removed %d cells with zero counts in the genes kept by min_cells=%d",
                    int((~final).sum()), params.min_cells)
    hvg = _choose_hvgs(totals, params, int(genes.sum()), dataset, qc.text)
    # cells left without counts in the kept genes are gone: check the split again
    sizes = _require_every_split(split[final], dataset, qc.text)
    if needs is not None:
        needs.check_split(sizes.to_dict(), int(hvg.sum()), dataset, qc.text,
                          params.test_fraction, params.val_fraction)
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
    is_train = is_train[final]
    mean, std = gene_mean_std(adata.X[is_train])
    adata.var["train_mean"] = mean
    adata.var["train_std"] = std
    adata.uns["scae"] = {
        "dataset": dataset,
        "label_key": label_key if labels is not None else "",
        "target_sum": float(params.target_sum),
        "n_cells_input": int(qc.n_input),
        "preprocess": asdict(params),
    }
    if thin is not None:
        adata.uns["scae"]["thin"] = asdict(thin)
    if labels is not None:
        adata.obs[label_key] = pd.Categorical(labels.to_numpy()[final])
    if clusters:
        adata.obs[CLUSTER_KEY] = training_clusters(adata.X, is_train, params.split_seed)
        logger.info("%d Leiden clusters of training cells", adata.obs[CLUSTER_KEY].nunique())
    logger.info(
        "preprocessed %s: %d cells × %d HVGs, split %s",
        dataset, adata.n_obs, adata.n_vars, adata.obs["split"].value_counts().to_dict(),
    )
    return adata


def _mito_genes(var_names: pd.Index, mito_prefix: str | None, dataset: str
                ) -> np.ndarray | None:
    """The mitochondrial genes, or None (no prefix, or no gene matches it: warned)."""
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
    """Pass 1's result: which input rows passed QC (``passed``), the kept cells' input row
    numbers (``cells``; QC passed and some counts), each input row's position among them
    (``position``, −1 if dropped), the % mitochondrial counts (or None) and the QC in words."""

    passed: np.ndarray
    cells: np.ndarray
    position: np.ndarray
    pct: np.ndarray | None
    n_input: int
    text: str

    def select(self, start: int, block: sp.csr_matrix) -> np.ndarray:
        return self.passed[start : start + block.shape[0]]


def _cell_pass(rows: CountRows, params: PreprocessParams, mito: np.ndarray | None,
               mcv: MCVParams | None) -> _CellQC:
    """1. Per-cell QC (genes detected, % mitochondrial counts), then cells without counts
    (after the molecule split, with ``mcv``) are dropped."""
    n_input = rows.shape[0]
    passed = np.zeros(n_input, dtype=bool)
    pct = np.zeros(n_input, dtype=np.float32) if mito is not None else None

    def cell_qc(start: int, block: sp.csr_matrix) -> np.ndarray:
        keep = np.diff(block.indptr) >= params.min_genes
        if pct is not None:
            totals = _row_sums(block)
            mito_counts = _row_sums(block[:, mito])
            share = np.divide(100 * mito_counts, totals, out=np.zeros_like(totals),
                              where=totals > 0)
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
        len(cells), n_input, params.min_genes, params.max_pct_mito,
    )
    position = np.full(n_input, -1, dtype=np.int64)
    position[cells] = np.arange(len(cells))
    text = (f"{n_input} cells in, {len(cells)} kept with min_genes={params.min_genes}, "
            f"max_pct_mito={params.max_pct_mito}")
    return _CellQC(passed, cells, position, pct, n_input, text)


def _gene_pass(rows: CountRows, qc: _CellQC, is_train: np.ndarray, params: PreprocessParams,
               mcv: MCVParams | None, dataset: str) -> np.ndarray:
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


def _kept_blocks(rows: CountRows, qc: _CellQC, genes: np.ndarray, mcv: MCVParams | None
                 ) -> Iterator[tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix | None]]:
    """(positions among the kept cells, counts, held-out) over the kept genes."""
    for ids, counts, heldout in _cell_blocks(rows, qc.select, mcv):
        where = qc.position[ids]
        rows_kept = where >= 0
        yield (where[rows_kept], counts[rows_kept][:, genes],
               None if heldout is None else heldout[rows_kept][:, genes])


@dataclass(frozen=True)
class _Totals:
    """Pass 3's result: library sizes over the kept genes (and of the held-out molecules),
    the training cells' gene moments for the HVGs, and each gene's stored entries."""

    library: np.ndarray
    heldout_library: np.ndarray | None
    moments: GeneMoments
    stored: np.ndarray
    stored_heldout: np.ndarray


def _library_pass(rows: CountRows, qc: _CellQC, genes: np.ndarray, is_train: np.ndarray,
                  params: PreprocessParams, mcv: MCVParams | None) -> _Totals:
    """3. Library sizes over the kept genes; the moments of expm1(log1p(normalized)) over
    training cells (for :func:`seurat_hvg`); each gene's stored entries (to size pass 4)."""
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


def _choose_hvgs(totals: _Totals, params: PreprocessParams, n_kept: int, dataset: str,
                 qc_text: str) -> np.ndarray:
    """The ``n_top_genes`` highly variable genes among the kept ones (all when fewer)."""
    n_top = min(params.n_top_genes, n_kept)
    if params.n_top_genes > n_kept:
        logger.info("n_top_genes=%d is more than the %d genes kept by min_cells=%d: all of "
                    "them are used", params.n_top_genes, n_kept, params.min_cells)
    hvg = seurat_hvg(totals.moments.mean, totals.moments.variance(), n_top)
    if not hvg.any():
        raise InputError(
            f"dataset {dataset!r}: none of the {n_kept} genes kept by min_cells="
            f"{params.min_cells} varies over the training cells ({qc_text}); lower the QC "
            "thresholds in config['preprocess'] or use more cells"
        )
    return hvg


def _hvg_pass(rows: CountRows, qc: _CellQC, genes: np.ndarray, final: np.ndarray,
              hvg: np.ndarray, totals: _Totals, params: PreprocessParams,
              mcv: MCVParams | None
              ) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix | None, dict]:
    """4. The HVG columns of every remaining cell: (log-normalized, raw counts, held-out
    counts or None without ``mcv``, normalize_total's/log1p's uns), each built in arrays
    allocated once."""
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
