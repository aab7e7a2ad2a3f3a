"""Out-of-core preprocessing: block-wise passes over an input on disk give exactly what the
in-memory scanpy pipeline gives, and never read the whole matrix."""

import tracemalloc
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scae.data
from scae.config import InputError
from scae.data._passes import preprocess_rows
from scae.data.checks import validate_counts
from scae.data.hvg import GeneMoments, gene_mean_std, seurat_hvg
from scae.data.input_size import preprocess_mem_mb
from scae.data.mcv import HELDOUT_LAYER, binomial_split
from scae.data.params import DatasetOptions, MCVParams, PreprocessParams
from scae.data.preprocess import preprocess
from scae.data.readers import H5adRows, HDF5Rows, open_counts, read_counts
from scae.data.split import stratified_split

from .conftest import PBMC3K, pbmc_subset

DEFAULT = PreprocessParams()


def reference_preprocess(adata, params, label_key, mito_prefix, mcv=None):
    """The in-memory pipeline preprocess ran before it went out of core (scanpy on the whole
    matrix, HVGs by scanpy's own seurat flavor): the oracle."""
    import scanpy as sc

    adata = ad.AnnData(
        X=sp.csr_matrix(adata.X, dtype=np.float32),
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        uns=dict(adata.uns),
    )
    keep = np.diff(adata.X.indptr) >= params.min_genes
    mito = np.asarray(adata.var_names.str.upper().str.startswith(mito_prefix.upper()))
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    pct = np.divide(
        100 * np.asarray(adata.X[:, mito].sum(axis=1)).ravel(),
        totals,
        out=np.zeros_like(totals),
        where=totals > 0,
    )
    adata.obs["pct_counts_mito"] = pct
    adata = adata[keep & (pct <= params.max_pct_mito)].copy()
    if mcv is not None:
        adata.X, adata.layers[HELDOUT_LAYER] = binomial_split(adata.X, mcv.train_fraction, mcv.seed)
    adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0].copy()
    labels = adata.obs[label_key].astype(str)
    adata.obs["split"] = pd.Categorical(
        stratified_split(
            labels, adata.n_obs, params.test_fraction, params.val_fraction, params.split_seed
        ),
        categories=["train", "val", "test"],
    )
    is_train = (adata.obs["split"] == "train").to_numpy()
    cells_per_gene = np.bincount(adata.X[is_train].indices, minlength=adata.n_vars)
    adata = adata[:, cells_per_gene >= params.min_cells].copy()
    empty = np.asarray(adata.X.sum(axis=1)).ravel() == 0
    adata, is_train = adata[~empty].copy(), is_train[~empty]
    adata.layers["counts"] = adata.X.copy()
    adata.obs["library_size"] = np.asarray(adata.X.sum(axis=1)).ravel()
    if mcv is not None:
        adata.obs["mcv_library_size"] = np.asarray(adata.layers[HELDOUT_LAYER].sum(axis=1)).ravel()
    sc.pp.normalize_total(adata, target_sum=params.target_sum)
    sc.pp.log1p(adata)
    hvg = sc.pp.highly_variable_genes(
        adata[is_train], n_top_genes=params.n_top_genes, flavor="seurat", inplace=False
    )["highly_variable"]
    adata = adata[:, hvg.to_numpy()].copy()
    X = adata.X[is_train].toarray().astype(np.float64)  # exact, unlike float32 sums
    adata.var["train_mean"] = X.mean(axis=0)
    adata.var["train_std"] = X.std(axis=0, ddof=1)
    adata.obs[label_key] = pd.Categorical(adata.obs[label_key].astype(str))
    return adata


def assert_same_matrix(a, b):
    assert a.shape == b.shape
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    assert (a != b).nnz == 0


def assert_same_result(got, expected):
    assert list(got.obs_names) == list(expected.obs_names)
    assert list(got.var_names) == list(expected.var_names)  # the HVG set, in gene order
    assert (got.obs["split"] == expected.obs["split"]).all()
    assert_same_matrix(got.X, expected.X)
    for layer in expected.layers:
        assert_same_matrix(got.layers[layer], expected.layers[layer])
    assert set(got.layers) == set(expected.layers)
    for column in expected.obs.columns:
        pd.testing.assert_series_equal(got.obs[column], expected.obs[column], check_names=False)
    for column in ("train_mean", "train_std"):
        np.testing.assert_allclose(got.var[column], expected.var[column], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def pbmc3k():
    return ad.read_h5ad(PBMC3K)


@pytest.fixture(scope="module")
def pbmc3k_reference(pbmc3k):
    return reference_preprocess(pbmc3k, DEFAULT, "cell_type", "MT-")


def test_bundled_data_matches_the_in_memory_scanpy_pipeline(pbmc3k, pbmc3k_reference):
    """The acceptance test: HVGs, split and matrices identical on the bundled pbmc3k, in
    memory (one block) and out of core (blocks of ~300 cells read from the .h5ad)."""
    assert pbmc3k_reference.n_vars == DEFAULT.n_top_genes
    in_memory = preprocess(pbmc3k, DEFAULT, dataset="pbmc3k", label_key="cell_type")
    assert_same_result(in_memory, pbmc3k_reference)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scae.data.readers, "CHUNK_NNZ", 1 << 18)  # blocks of ~300 cells
        with open_counts(PBMC3K) as rows:
            assert isinstance(rows, H5adRows)
            assert sum(1 for _ in rows.blocks(scae.data.readers.CHUNK_NNZ)) > 5
            out_of_core = preprocess_rows(rows, DEFAULT, DatasetOptions("pbmc3k", "cell_type"))
    assert_same_result(out_of_core, pbmc3k_reference)
    assert out_of_core.uns["log1p"] == in_memory.uns["log1p"]
    # (preprocess_rows is given no orientation: scae.preprocess decides one and records it)
    assert in_memory.uns["scae"].pop("orientation")["decided_by"] == "evidence"
    assert out_of_core.uns["scae"] == in_memory.uns["scae"]


def test_molecule_split_is_the_same_in_blocks(monkeypatch):
    """With MCV every pass redraws c' and c'' from one generator in row order: identical to
    splitting the whole matrix at once."""
    raw = pbmc_subset(600)
    params = PreprocessParams(n_top_genes=300)
    mcv = MCVParams(train_fraction=0.9, seed=3)
    expected = reference_preprocess(raw, params, "cell_type", "MT-", mcv)
    monkeypatch.setattr(scae.data.readers, "CHUNK_NNZ", 1 << 16)
    got = preprocess(raw, params, dataset="t", label_key="cell_type", mcv=mcv)
    assert_same_result(got, expected)
    assert HELDOUT_LAYER in got.layers


def test_seurat_hvg_equals_scanpy_with_single_gene_bins():
    """Moments → HVGs as scanpy's seurat flavor, including genes alone in their mean bin,
    genes with zero variance and ties."""
    import scanpy as sc

    rng = np.random.default_rng(0)
    X = sp.random(300, 400, density=0.1, random_state=rng, format="csr", dtype=np.float32)
    X.data = np.log1p(np.round(X.data * 20))
    lone = np.log1p(rng.integers(2000, 4000, size=(300, 1))).astype(np.float32)  # own bin
    X = sp.hstack(
        [X, sp.csr_matrix(lone), sp.csr_matrix((300, 2), dtype=np.float32)], format="csr"
    )  # and two genes never detected
    adata = ad.AnnData(X)
    for n_top in (10, 100, 390):
        expected = sc.pp.highly_variable_genes(
            adata, n_top_genes=n_top, flavor="seurat", inplace=False
        )["highly_variable"].to_numpy()
        moments = GeneMoments(X.shape[1]).add(np.expm1(X))
        np.testing.assert_array_equal(seurat_hvg(moments.mean, moments.variance(), n_top), expected)


def test_gene_moments_in_blocks_equal_the_whole():
    rng = np.random.default_rng(1)
    X = sp.random(1000, 50, density=0.2, random_state=rng, format="csr") * 1000
    whole = GeneMoments(50).add(X)
    blocks = GeneMoments(50)
    for start in range(0, 1000, 137):
        blocks.add(X[start : start + 137])
    dense = X.toarray()
    np.testing.assert_allclose(blocks.mean, dense.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(blocks.variance(), dense.var(axis=0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(whole.variance(), blocks.variance(), rtol=1e-10)
    mean, std = gene_mean_std(X)  # the same moments, as float32
    np.testing.assert_allclose(mean, dense.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, dense.std(axis=0, ddof=1), rtol=1e-5)


# --- the memory claim -------------------------------------------------------------------------


class ReadGuard:
    """Wraps h5py's Dataset reads: a read of a matrix's ``data`` or ``indices`` (by whichever
    reader: ours, or anndata's sparse_dataset) must be a bounded slice of at most ``limit``
    elements; records the largest."""

    largest = 0

    def __init__(self, limit):
        self.limit, self.real = limit, h5py.Dataset.__getitem__

    def __call__(self, dataset, key):
        if dataset.name.rsplit("/", 1)[-1] in ("data", "indices"):
            start, stop = (key.start, key.stop) if isinstance(key, slice) else (None, None)
            if start is None or stop is None:
                raise AssertionError(f"read of {dataset.name}[{key!r}]: not a bounded block")
            ReadGuard.largest = max(ReadGuard.largest, stop - start)
            if stop - start > self.limit:
                raise AssertionError(f"read of {stop - start} elements > {self.limit}")
        return self.real(dataset, key)


def test_the_full_matrix_is_never_read(tmp_path, monkeypatch):
    """Every read of the input's data and indices is one bounded block; only indptr (a number
    per cell) is read whole."""
    path = tmp_path / "pbmc.h5ad"
    raw = pbmc_subset(1200)
    raw.write_h5ad(path)
    nnz = raw.X.nnz
    limit = nnz // 8
    monkeypatch.setattr(scae.data.readers, "CHUNK_NNZ", limit)
    params = PreprocessParams(n_top_genes=300)
    ReadGuard.largest = 0
    with open_counts(path) as rows, pytest.MonkeyPatch.context() as guard:
        reads = ReadGuard(limit)
        guard.setattr(h5py.Dataset, "__getitem__", lambda dataset, key: reads(dataset, key))
        validate_counts(rows, str(path), "t", require_integers=True)
        got = preprocess_rows(rows, params, DatasetOptions("t", "cell_type"))
    assert 0 < ReadGuard.largest <= limit
    assert_same_result(got, reference_preprocess(raw, params, "cell_type", "MT-"))
    with h5py.File(path) as file, pytest.raises(AssertionError, match="not a bounded block"):
        ReadGuard(limit)(file["X/data"], ())  # the guard itself refuses a whole read


def test_memory_scales_with_the_result_not_the_input(tmp_path):
    """Traced allocations (NumPy and SciPy arrays included) while preprocessing a wide input
    stay far below the input matrix: blocks and cells × HVGs only."""
    from scae.data.synthetic import SyntheticParams, write_synthetic

    path = write_synthetic(
        tmp_path / "wide.h5ad",
        SyntheticParams(n_cells=6000, n_genes=6000, median_library=3000, seed=2),
    )
    with h5py.File(path) as f:
        input_bytes = f["X/data"].shape[0] * 8  # float32 values + int32 indices
    params = PreprocessParams(min_genes=10, n_top_genes=200)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(scae.data.readers, "CHUNK_NNZ", 1 << 17)
                with open_counts(path) as rows:
                    result = preprocess_rows(
                        rows, params, DatasetOptions("w", "cell_type", mito_prefix=None)
                    )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result_bytes = result.X.nnz * 16
    assert result_bytes < input_bytes / 5
    assert peak < input_bytes / 2, (peak, input_bytes, result_bytes)


# --- readers ----------------------------------------------------------------------------------


def _write_10x_v3(path, X, genes, cells, feature_types):
    csc = sp.csc_matrix(X.T)
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = csc.data.astype(np.int32), csc.indices, csc.indptr
        m["shape"] = np.array(csc.shape)
        m["barcodes"] = np.array(cells, dtype="S")
        feats = m.create_group("features")
        feats["id"] = np.array([f"ID{g}" for g in genes], dtype="S")
        feats["name"] = np.array(genes, dtype="S")
        feats["feature_type"] = np.array(feature_types, dtype="S")
        feats["genome"] = np.array(["g"] * len(genes), dtype="S")
        feats["_all_tag_keys"] = np.array([b"genome"])


@pytest.mark.parametrize("counts", ["X", "raw", "spliced"])
def test_h5ad_blocks_equal_read_counts(tmp_path, counts):
    raw = pbmc_subset(300)
    adata = ad.AnnData(
        X=raw.X.copy(), obs=raw.obs, var=raw.var, uns={"note": "x"}, layers={"spliced": raw.X * 2}
    )
    adata.raw = adata.copy()
    adata.X = sp.csr_matrix(adata.X * 3)
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    whole = read_counts(path, counts=counts)
    with open_counts(path, counts=counts) as rows:
        assert isinstance(rows, H5adRows)
        blocks = sp.vstack([b for _, b in rows.blocks(max_nnz=5000)])
        pd.testing.assert_frame_equal(rows.obs, whole.obs)
        pd.testing.assert_frame_equal(rows.var, whole.var)
        assert rows.uns["note"] == "x"
    assert_same_matrix(blocks, whole.X)


def test_dense_h5ad_and_10x_h5_are_read_in_blocks(tmp_path):
    rng = np.random.default_rng(0)
    X = sp.random(40, 6, density=0.5, random_state=rng, format="csr", dtype=np.float32)
    X.data = np.round(X.data * 10) + 1
    genes, cells = [f"G{i}" for i in range(6)], [f"C{i}" for i in range(40)]
    ad.AnnData(
        X=X.toarray(), obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes)
    ).write_h5ad(tmp_path / "dense.h5ad")
    types = ["Gene Expression"] * 5 + ["Antibody Capture"]
    _write_10x_v3(tmp_path / "a.h5", X, genes, cells, types)
    for name in ("dense.h5ad", "a.h5"):
        whole = read_counts(tmp_path / name)
        with open_counts(tmp_path / name) as rows:
            assert isinstance(rows, HDF5Rows), name
            blocks = sp.vstack([b for _, b in rows.blocks(max_nnz=20)])
            pd.testing.assert_frame_equal(
                rows.var, whole.var, check_dtype=False, check_column_type=False
            )
            assert list(rows.obs.index) == list(whole.obs_names)
        assert_same_matrix(blocks, whole.X)
    assert whole.n_vars == 5  # the antibody feature is left out, as scanpy does


def test_other_layouts_are_read_whole(tmp_path):
    """CSC-stored counts and transposed inputs go through read_counts."""
    raw = pbmc_subset(100)
    ad.AnnData(X=sp.csc_matrix(raw.X), obs=raw.obs, var=raw.var).write_h5ad(tmp_path / "c.h5ad")
    with open_counts(tmp_path / "c.h5ad") as rows:
        assert not isinstance(rows, (H5adRows, HDF5Rows))
        assert_same_matrix(rows.read(0, rows.shape[0]), raw.X)


def test_truncated_file_is_named_when_a_block_fails(tmp_path):
    raw = pbmc_subset(400)
    path = tmp_path / "whole.h5ad"
    raw.write_h5ad(path)
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut\.h5ad: could not be read as AnnData.*complete"):
        with open_counts(cut) as rows:
            preprocess_rows(rows, PreprocessParams(n_top_genes=100), DatasetOptions("t"))


def test_unknown_counts_are_named_without_reading_the_matrix(tmp_path):
    raw = pbmc_subset(50)
    ad.AnnData(X=raw.X, layers={"spliced": raw.X}).write_h5ad(tmp_path / "a.h5ad")
    with pytest.raises(
        InputError,
        match=r"'counts' is neither 'X', 'raw' nor a layer "
        r"\(layers: spliced\)",
    ):
        with open_counts(tmp_path / "a.h5ad", counts="counts"):
            pass
    with pytest.raises(InputError, match="counts: raw was configured but the file has no .raw"):
        with open_counts(tmp_path / "a.h5ad", counts="raw"):
            pass


def test_validate_counts_in_blocks_counts_every_block(tmp_path, monkeypatch):
    raw = pbmc_subset(300)
    X = raw.X.astype(np.float32)
    X.data[[0, -1]] = -1.0  # first and last block
    ad.AnnData(X=X, obs=raw.obs, var=raw.var).write_h5ad(tmp_path / "neg.h5ad")
    monkeypatch.setattr(scae.data.readers, "CHUNK_NNZ", 10_000)
    with open_counts(tmp_path / "neg.h5ad") as rows:
        with pytest.raises(InputError, match=r"not raw counts \(2 negative"):
            validate_counts(rows, "neg.h5ad", "neg", require_integers=False)


def test_mem_mb_follows_the_result(tmp_path):
    """The request grows with cells × HVGs, not with the genes of the input."""
    path = tmp_path / "a.h5ad"
    pbmc_subset(400).write_h5ad(path)
    few, many = (preprocess_mem_mb(path, "X", n, mcv=False) for n in (100, 10_000))
    assert 1500 <= few < many
    assert preprocess_mem_mb(path, "X", 10_000, mcv=True) > many
    (tmp_path / "a.csv").write_text("x,g\nc,1\n")
    assert preprocess_mem_mb(tmp_path / "a.csv", "X", 100, mcv=False) >= 2000
