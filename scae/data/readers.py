"""Reading count matrices: whole (:func:`read_counts`) or a block of cells at a time.

Every preprocessing pass walks a :class:`CountRows`: blocks of consecutive cells, at most
:data:`CHUNK_NNZ` stored entries each, as CSR. An in-memory AnnData gives
:class:`MatrixRows`; ``.h5ad`` and Cell Ranger ``.h5`` files give :class:`HDF5Rows`, read with
h5py a block at a time (:func:`open_counts`), so memory scales with the result, not the input.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..config import SUPPORTED_FORMATS, InputError, format_of
from ..orientation import LOOM_CELL_NAMES, LOOM_GENE_NAMES, loom_names, table_layout
from .mcv import binomial_thin
from .params import THINNING_STREAM, Thinning

logger = logging.getLogger("scae")
# scanpy is imported inside the functions that use it: the training env (envs/torch.yaml)
# has no scanpy.

#: Stored entries per block of cells read at once (32 MB of float32 values plus as much for
#: their column indices): bounds the working memory of every preprocessing pass.
CHUNK_NNZ = 1 << 23


def _unreadable(path: Path, kind: str, err: BaseException) -> InputError:
    """Return the error for a file its reader cannot parse: corrupt, truncated, another format."""
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


#: Values per block of a text table parsed at once (rows × columns; 32 MB as float64).
TABLE_BLOCK_VALUES = 1 << 22


def read_table(path: str | Path, sep: str) -> ad.AnnData:
    """Read a delimited text table of counts (optionally gzipped) as a sparse AnnData.

    Rows become ``obs``, the header's columns ``var``, as stored (orientation is decided
    later, :mod:`scae.orientation`). The first column holds the row names when its values
    are not numbers (or when the header has one field fewer, as R writes it); further leading
    text columns (e.g. a GEO gene description) are kept as annotations of the rows. The table
    is parsed ``TABLE_BLOCK_VALUES`` values at a time and kept sparse, so memory scales with the
    stored counts, not the dense table.

    Raises
    ------
    InputError
        When a count column holds text after the leading name and description columns.
    """
    path = Path(path)
    implicit, text, count_columns = table_layout(path, sep)
    n_columns = len(text) + len(count_columns)
    chunk_rows = max(1, TABLE_BLOCK_VALUES // max(n_columns, 1))
    blocks, names, annotations = [], [], []
    for chunk in pd.read_csv(path, sep=sep, chunksize=chunk_rows, dtype={c: str for c in text}):
        counts = chunk.drop(columns=text)
        bad = [str(c) for c in counts.columns if not pd.api.types.is_numeric_dtype(counts[c])]
        if bad:
            raise InputError(
                f"{path}: column {bad[0]!r} holds text among the counts (rows "
                f"{chunk.index[0]}-{chunk.index[-1]}); a table holds row names and optional "
                "description columns first, then one numeric column per cell or gene: remove "
                "or move that column"
            )
        blocks.append(sp.csr_matrix(counts.to_numpy(dtype=np.float32)))
        if implicit:
            names.append(chunk.index.astype(str))
        elif text:
            names.append(pd.Index(chunk[text[0]].astype(str)))
        annotations.append(chunk[text if implicit else text[1:]])
    X = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, len(count_columns)))
    index = names[0].append(names[1:]) if names else pd.RangeIndex(X.shape[0]).astype(str)
    obs = pd.concat(annotations) if annotations else pd.DataFrame()
    obs.index = index
    if text and not implicit:
        logger.info("%s: row names from column %r", path, text[0])
    if len(obs.columns):
        logger.info(
            "%s: text columns %s kept as annotations of the rows, not counts",
            path,
            ", ".join(map(repr, obs.columns)),
        )
    var = pd.DataFrame(index=pd.Index(count_columns))
    return ad.AnnData(X=X, obs=obs, var=var)


def _read_loom(path: Path) -> ad.AnnData:
    """Read a loom file as cells × genes with anndata (loompy stores genes × cells).

    ``X`` is the main matrix; every other loom layer (e.g. velocyto's ``spliced``) is a layer,
    selectable with ``counts``.
    """
    with h5py.File(path, "r") as file:
        cells = loom_names(file.get("col_attrs", {}), LOOM_CELL_NAMES) or "CellID"
        genes = loom_names(file.get("row_attrs", {}), LOOM_GENE_NAMES) or "Gene"
    adata = ad.io.read_loom(path, sparse=True, X_name="", obs_names=cells, var_names=genes)
    adata.obs_names = [str(name) for name in adata.obs_names]  # (loompy gives numpy strings)
    adata.var_names = [str(name) for name in adata.var_names]
    return adata


def read_anndata(path: str | Path) -> ad.AnnData:
    """Read the dataset at ``path`` whole, as its format's reader gives it.

    Cells × genes for every format but a genes × cells text table, which comes as stored.

    Raises
    ------
    InputError
        When the file cannot be parsed as its format.
    """
    import scanpy as sc

    path = Path(path)
    kind = format_of(path)
    try:
        if kind == ".h5ad":
            return ad.read_h5ad(path)
        if kind == ".zarr":
            return ad.read_zarr(path)
        if kind == ".loom":
            return _read_loom(path)
        if kind == ".h5":
            return sc.read_10x_h5(path)
        if kind == "<directory>":
            return sc.read_10x_mtx(path, var_names="gene_symbols", cache=False)
        return read_table(path, "," if kind == ".csv" else "\t")
    except InputError:
        raise
    except Exception as err:  # corrupt or truncated files surface as many error types
        raise _unreadable(path, kind, err) from err


def read_counts(path: str | Path, counts: str = "X", transpose: bool = False) -> ad.AnnData:
    """Read a dataset whole and return an AnnData whose ``X`` holds its raw counts as CSR.

    ``counts`` names where the counts live in an ``.h5ad``, ``.zarr`` or ``.loom``: ``"X"``,
    ``"raw"`` (``adata.raw.X``) or a layer name. ``transpose`` flips a matrix stored genes ×
    cells into cells × genes. :func:`open_counts` reads ``.h5ad`` and 10x ``.h5`` files a
    block of cells at a time instead.
    """
    path = Path(path)
    adata = read_anndata(path)
    if transpose:
        adata = adata.T
    if counts != "X":
        if counts == "raw":
            if adata.raw is None:
                raise _no_raw(path)
            adata = ad.AnnData(X=adata.raw.X, obs=adata.obs, var=adata.raw.var, uns=adata.uns)
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


def round_counts(X: sp.spmatrix | np.ndarray) -> sp.spmatrix | np.ndarray:
    """Return a copy of ``X`` with every value rounded to the nearest integer.

    Sparse: the zeros that makes are dropped, since noise around 0 would otherwise count as a
    detected gene.
    """
    if not sp.issparse(X):
        return np.round(X)
    X = X.copy()
    np.round(X.data, out=X.data)
    X.eliminate_zeros()
    return X


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
        """(cells, genes) of the matrix."""
        return len(self.obs), len(self.var)

    def row_nnz(self) -> np.ndarray:
        """Return the number of stored entries per row (what the blocks are sized by)."""
        raise NotImplementedError

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        """Return rows ``start:stop`` as float32 CSR."""
        raise NotImplementedError

    #: Whether :meth:`blocks` rounds every value to the nearest integer (and drops the zeros
    #: that makes): set by :func:`validate_counts` for counts with conversion noise.
    rounded: bool = False
    #: Whether :meth:`blocks` thins the counts (a depth variant): set by :func:`preprocess_rows`
    #: after validation, so the checks see the counts as stored.
    thinning: Thinning | None = None
    #: Where else the input holds integer counts, in words with the setting that selects
    #: them (:func:`counts_hint`): called only when these rows are not counts.
    counts_hint: Callable[[], str] | None = None

    def blocks(self, max_nnz: int | None = None) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield (first row, its block) over all rows, in order.

        A block holds at most ``max_nnz`` (default :data:`CHUNK_NNZ`) stored entries, or one
        row if a single row holds more; it is rounded and thinned as :attr:`rounded` and
        :attr:`thinning` say.
        """
        # One generator per pass: every pass over the rows sees the same thinned counts.
        thin_rng = (
            np.random.default_rng([THINNING_STREAM, self.thinning.seed]) if self.thinning else None
        )
        for start, stop in self._spans(max_nnz or CHUNK_NNZ):
            block = self.read(start, stop)
            if self.rounded:
                block = round_counts(block)
            if thin_rng is not None:
                block = binomial_thin(block, self.thinning.fraction, thin_rng)
            yield start, block

    def transposed(self) -> MatrixRows:
        """Return the matrix with rows and columns swapped (genes stored as rows), read whole.

        Rounding and thinning are not applied: orientation is decided before the checks.
        """
        blocks = [self.read(start, stop) for start, stop in self._spans(CHUNK_NNZ)]
        X = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix(self.shape)
        return MatrixRows(X.T, self.var.copy(), self.obs.copy(), dict(self.uns), self.source)

    def _spans(self, max_nnz: int) -> Iterator[tuple[int, int]]:
        """(start, stop) of successive blocks of at most ``max_nnz`` stored entries (or a row)."""
        ends = np.cumsum(self.row_nnz(), dtype=np.int64)
        start, n_rows = 0, self.shape[0]
        while start < n_rows:
            before = ends[start - 1] if start else 0
            stop = int(np.searchsorted(ends, before + max_nnz, side="right"))
            stop = min(max(stop, start + 1), n_rows)
            yield start, stop
            start = stop


class MatrixRows(CountRows):
    """Rows of a matrix already in memory (an AnnData's ``X`` or layer)."""

    def __init__(
        self,
        X: sp.spmatrix | np.ndarray,
        obs: pd.DataFrame,
        var: pd.DataFrame,
        uns: dict,
        source: str,
    ) -> None:
        super().__init__(obs, var, uns, source)
        self.X = sp.csr_matrix(X, dtype=np.float32)

    def row_nnz(self) -> np.ndarray:
        """Return the number of stored entries per row of the CSR matrix."""
        return np.diff(self.X.indptr)

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        """Return rows ``start:stop`` of the matrix in memory."""
        return self.X[start:stop]


class HDF5Rows(CountRows):
    """Rows of a matrix in an open HDF5 file, read with h5py one block at a time.

    For the matrices that anndata has no encoding for.

    ``element`` is a dense dataset (an ``.h5ad`` whose ``X`` is dense), or a 10x ``.h5``
    matrix group, whose genes × cells CSC ``data``/``indices``/``indptr`` are the same three
    arrays as cells × genes CSR (``.h5ad`` CSR matrices are :class:`H5adRows`). Only
    ``indptr`` (one integer per cell) is held in memory. ``columns`` keeps a subset of the
    stored columns (10x: gene-expression features).
    """

    def __init__(
        self,
        element: h5py.Group | h5py.Dataset,
        n_stored_columns: int,
        obs: pd.DataFrame,
        var: pd.DataFrame,
        uns: dict,
        source: str,
        columns: np.ndarray | None = None,
    ) -> None:
        super().__init__(obs, var, uns, source)
        self.element, self.n_stored, self.columns = element, n_stored_columns, columns
        self.dense = isinstance(element, h5py.Dataset)
        self.indptr = None if self.dense else element["indptr"][:].astype(np.int64)

    def row_nnz(self) -> np.ndarray:
        """Return the stored entries per row: all columns if dense, else from ``indptr``."""
        if self.dense:
            return np.full(self.shape[0], self.n_stored, dtype=np.int64)
        return np.diff(self.indptr)

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        """Read rows ``start:stop`` from the file as float32 CSR, of the kept ``columns`` only.

        Raises
        ------
        InputError
            When the file is truncated or corrupt.
        """
        try:
            if self.dense:
                block = sp.csr_matrix(np.asarray(self.element[start:stop], dtype=np.float32))
            else:
                first, last = self.indptr[start], self.indptr[stop]
                block = sp.csr_matrix(
                    (
                        self.element["data"][first:last].astype(np.float32, copy=False),
                        self.element["indices"][first:last],
                        self.indptr[start : stop + 1] - first,
                    ),
                    shape=(stop - start, self.n_stored),
                )
        except (OSError, KeyError, ValueError) as err:  # truncated or corrupt on disk
            kind = format_of(self.source)
            raise _unreadable(Path(self.source), kind, err) from err
        return block if self.columns is None else block[:, self.columns]


class H5adRows(CountRows):
    """Rows of an ``.h5ad`` CSR matrix, read through anndata's ``sparse_dataset``.

    ``sparse_dataset`` reads the stored entries of rows ``start:stop`` and nothing else. Only
    ``indptr`` (one integer per cell) is held in memory.
    """

    def __init__(
        self, element: h5py.Group, obs: pd.DataFrame, var: pd.DataFrame, uns: dict, source: str
    ) -> None:
        from anndata.io import sparse_dataset

        super().__init__(obs, var, uns, source)
        self.matrix = sparse_dataset(element)
        self.indptr = element["indptr"][:].astype(np.int64)

    def row_nnz(self) -> np.ndarray:
        """Return the number of stored entries per row, from ``indptr``."""
        return np.diff(self.indptr)

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        """Read rows ``start:stop`` from the file as float32 CSR.

        Raises
        ------
        InputError
            When the file is truncated or corrupt.
        """
        try:
            return sp.csr_matrix(self.matrix[start:stop], dtype=np.float32)
        except (OSError, KeyError, ValueError) as err:  # truncated or corrupt on disk
            raise _unreadable(Path(self.source), format_of(self.source), err) from err


def rows_of(adata: ad.AnnData, source: str, layer: str | None = None) -> MatrixRows:
    """Return an in-memory AnnData's counts (``X``, or ``layers[layer]``) as :class:`CountRows`."""
    counts = adata.X if layer is None else adata.layers[layer]
    return MatrixRows(counts, adata.obs.copy(), adata.var.copy(), dict(adata.uns), source)


def _h5ad_rows(file: h5py.File, path: Path, counts: str) -> H5adRows | HDF5Rows | None:
    """Return the counts of an ``.h5ad`` as :class:`H5adRows` (CSR) or :class:`HDF5Rows` (dense).

    None when they are stored column-wise (CSC) or in a layout this reader does not know
    (e.g. anndata < 0.7).
    """
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
    return H5adRows(element, obs, var, uns, str(path))


def _tenx_rows(file: h5py.File, path: Path) -> HDF5Rows | None:
    """Return a Cell Ranger ≥ 3 ``.h5``'s counts as :class:`HDF5Rows`.

    With the annotations and the gene-expression features that ``scanpy.read_10x_h5`` gives;
    None for the legacy (Cell Ranger 2) layout.
    """
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
        logger.info(
            "%s: features by type: %s; only the %d Gene Expression features are used",
            path,
            ", ".join(f"{n} {kind}" for kind, n in found.items()),
            int(expression.sum()),
        )
    return HDF5Rows(
        matrix, len(var), obs, var if keep is None else var[keep], {}, str(path), columns=keep
    )


def count_places(adata: ad.AnnData) -> list[str]:
    """Return where ``adata`` holds integer counts: ``"X"``, ``"raw"`` or layer names.

    A place holds counts when the stored values of its first rows (up to 1,000) are finite,
    non-negative integers (within :data:`~scae.data.checks.COUNT_TOLERANCE`), not all zero.
    """
    from .checks import looks_like_counts

    places = {"X": adata.X}
    if adata.raw is not None:
        places["raw"] = adata.raw.X
    places |= dict(adata.layers.items())
    return [name for name, X in places.items() if looks_like_counts(X[:1000])]


def counts_hint(places: list[str], current: str, setting: Callable[[str], str]) -> str:
    """Say which of ``places`` (:func:`count_places`) but ``current`` hold integer counts.

    With the ``setting`` that selects the first, e.g. "integer counts are in
    layers['counts']: set datasets.d.counts: counts".
    """
    others = [place for place in places if place != current]
    if not others:
        return "no X, raw or layer of the input holds integer counts"
    where = ", ".join(place if place in ("X", "raw") else f"layers[{place!r}]" for place in others)
    return f"integer counts are in {where}: {setting(others[0])}"


def file_count_places(path: str | Path) -> list[str]:
    """:func:`count_places` of the dataset at ``path``; [] where it cannot be read.

    An ``.h5ad``'s matrices are sliced on disk (the first 1,000 rows of each), others read whole.
    """
    from anndata.io import sparse_dataset

    from .checks import looks_like_counts

    path = Path(path)
    try:
        if format_of(path) != ".h5ad":
            return count_places(read_anndata(path))
        with h5py.File(path, "r") as file:
            places = {"X": file["X"]}
            if "raw" in file:
                places["raw"] = file["raw/X"]
            places |= dict(file["layers"].items()) if "layers" in file else {}
            found = []
            for name, element in places.items():
                if isinstance(element, h5py.Group):
                    element = sparse_dataset(element)
                if looks_like_counts(element[: min(1000, element.shape[0])]):
                    found.append(name)
            return found
    except Exception:  # (the error being raised already names what is wrong)
        return []


@contextlib.contextmanager
def open_counts(path: str | Path, counts: str = "X") -> Iterator[CountRows]:
    """Open the raw counts of the dataset at ``path`` as :class:`CountRows`, as stored.

    The rows come with the annotations :func:`read_counts` gives; which axis holds the cells is
    decided afterwards (:func:`scae.data.preprocess.orient`).

    ``.h5ad`` files (CSR or dense counts in ``X``, a layer or ``raw``) and Cell Ranger ≥ 3
    ``.h5`` files stay on disk and are read a block of cells at a time with h5py while the
    context is open. Everything else — ``.zarr``, ``.loom``, text tables (parsed in blocks,
    kept sparse), 10x mtx directories, legacy 10x ``.h5`` and CSC-stored ``.h5ad`` matrices —
    is read whole by :func:`read_counts`.
    """
    path = Path(path)
    kind = format_of(path)
    streamed = kind in (".h5ad", ".h5") and path.suffix.lower() != ".gz"
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
            rows = rows_of(read_counts(path, counts), str(path))
        yield rows
    finally:
        if file is not None:
            file.close()
