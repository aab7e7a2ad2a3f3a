"""Reading count matrices: whole (:func:`read_counts`) or a block of cells at a time.

Every preprocessing pass walks a :class:`CountRows`: blocks of consecutive cells, at most
:data:`CHUNK_NNZ` stored entries each, as CSR. An in-memory AnnData gives
:class:`MatrixRows`; ``.h5ad`` and Cell Ranger ``.h5`` files give :class:`HDF5Rows`, read with
h5py a block at a time (:func:`open_counts`), so memory scales with the result, not the input.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..config import SUPPORTED_FORMATS, InputError, format_of
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


def read_counts(path: str | Path, counts: str = "X", transpose: bool = False) -> ad.AnnData:
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

    def blocks(self, max_nnz: int | None = None) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield (first row, its block) over all rows, in order.

        A block holds at most ``max_nnz`` (default :data:`CHUNK_NNZ`) stored entries, or one
        row if a single row holds more; it is rounded and thinned as :attr:`rounded` and
        :attr:`thinning` say.
        """
        max_nnz = max_nnz or CHUNK_NNZ
        ends = np.cumsum(self.row_nnz(), dtype=np.int64)
        start, n_rows = 0, self.shape[0]
        # One generator per pass: every pass over the rows sees the same thinned counts.
        thin_rng = (
            np.random.default_rng([THINNING_STREAM, self.thinning.seed]) if self.thinning else None
        )
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


@contextlib.contextmanager
def open_counts(
    path: str | Path, counts: str = "X", transpose: bool = False
) -> Iterator[CountRows]:
    """Open the raw counts of the dataset at ``path`` as :class:`CountRows`.

    The rows come with the annotations :func:`read_counts` gives.

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
