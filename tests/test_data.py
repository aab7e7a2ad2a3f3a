"""Reading every supported format, input validation, the split and leakage-free preprocessing."""

import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from scae.config import InputError, check_input_path
from scae.data.checks import validate_counts
from scae.data.params import DatasetOptions, PreprocessParams
from scae.data.preprocess import preprocess
from scae.data.readers import read_counts
from scae.data.split import stratified_split

SMALL = PreprocessParams(min_genes=200, min_cells=3, n_top_genes=300)


def test_stratified_split_keeps_label_proportions():
    labels = pd.Series(np.repeat(["a", "b", "c", "d"], [500, 120, 33, 1]))
    split = stratified_split(labels, len(labels), 0.2, 0.1, seed=3)
    table = pd.crosstab(labels, split)
    for label, n in labels.value_counts().items():
        if n < 3:
            assert table.loc[label, "train"] == n  # too small to hold cells out
            continue
        assert table.loc[label, "test"] == round(n * 0.2)
        assert table.loc[label, "val"] == round(n * 0.1)
    again = stratified_split(labels, len(labels), 0.2, 0.1, seed=3)
    assert (split == again).all()
    assert (split != stratified_split(labels, len(labels), 0.2, 0.1, seed=4)).any()


def test_preprocess_outputs(pbmc_small):
    out = preprocess(pbmc_small, SMALL, dataset="t", label_key="cell_type", mito_prefix="MT-")
    assert out.n_vars == 300
    assert sp.issparse(out.X) and sp.issparse(out.layers["counts"])
    counts = out.layers["counts"]
    assert np.allclose(counts.data, np.round(counts.data))
    # X = log1p(counts / library_size * target_sum), on the kept genes
    cell = 5
    expected = np.log1p(counts[cell].toarray() / out.obs["library_size"].iloc[cell] * 1e4)
    np.testing.assert_allclose(out.X[cell].toarray(), expected, rtol=1e-5)
    assert set(out.obs["split"]) == {"train", "val", "test"}


def test_preprocess_ignores_test_cells(pbmc_small):
    """HVGs, gene filter and training mean/sd do not move when test cells change."""
    first = preprocess(pbmc_small, SMALL, dataset="t", label_key="cell_type", mito_prefix="MT-")
    test_cells = first.obs_names[first.obs["split"] == "test"]
    perturbed = pbmc_small.copy()
    rows = perturbed.obs_names.get_indexer(test_cells)
    X = perturbed.X.tolil()
    rng = np.random.default_rng(0)
    for row in rows:  # give every test cell a burst of counts in random genes
        X[row, rng.choice(perturbed.n_vars, 50, replace=False)] = 500
    perturbed.X = X.tocsr()
    second = preprocess(perturbed, SMALL, dataset="t", label_key="cell_type", mito_prefix="MT-")
    assert (second.obs["split"] == first.obs["split"]).all()
    assert list(second.var_names) == list(first.var_names)
    np.testing.assert_array_equal(second.var["train_mean"], first.var["train_mean"])


def test_missing_label_key_warns_and_continues(pbmc_small):
    with pytest.warns(UserWarning, match="label_key 'celltype' is not a column"):
        out = preprocess(pbmc_small, SMALL, dataset="t", label_key="celltype", mito_prefix="MT-")
    assert out.uns["scae"]["label_key"] == ""


def test_mito_prefix_absent_warns(pbmc_small):
    with pytest.warns(UserWarning, match="mitochondrial filter is skipped"):
        preprocess(pbmc_small, SMALL, dataset="t", label_key=None, mito_prefix="ENSG")


def test_qc_removing_everything_names_thresholds(pbmc_small):
    strict = PreprocessParams(min_genes=100_000)
    with pytest.raises(InputError, match=r"400 cells in, 0 kept with min_genes=100000"):
        preprocess(pbmc_small, strict, dataset="t", label_key=None, mito_prefix=None)


@pytest.mark.parametrize(
    "values, require_integers, message",
    [
        ([1.0, np.nan, np.inf], False, "2 NaN or infinite entries"),
        ([1.0, -2.0], False, "1 negative and 0 non-integer"),
        ([1.0, 2.5], True, "0 negative and 1 non-integer"),
    ],
)
def test_validate_counts_rejects_non_counts(values, require_integers, message):
    X = sp.csr_matrix(np.array([values], dtype=np.float32))
    with pytest.raises(InputError, match=message):
        validate_counts(X, "f.h5ad", "d", require_integers)


def test_validate_counts_warns_on_fractions_without_count_loss():
    with pytest.warns(UserWarning, match="1 non-integer values"):
        validate_counts(sp.csr_matrix(np.array([[1.0, 2.5]])), "f.h5ad", "d", False)


def test_check_input_path_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist; fix datasets.d.path"):
        check_input_path(tmp_path / "nope.h5ad", "d")
    bad = tmp_path / "counts.xlsx"
    bad.write_text("x")
    with pytest.raises(InputError, match="unsupported file type '.xlsx'; accepted formats"):
        check_input_path(bad, "d")


def test_corrupt_h5ad_names_file(tmp_path):
    bad = tmp_path / "broken.h5ad"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(InputError, match="broken.h5ad: could not be read as AnnData"):
        read_counts(bad)


def _small_counts():
    rng = np.random.default_rng(0)
    X = sp.random(6, 5, density=0.5, random_state=rng, format="csr") * 10
    X.data = np.round(X.data) + 1
    genes = [f"G{i}" for i in range(5)]
    cells = [f"C{i}" for i in range(6)]
    return X.astype(np.float32), genes, cells


def test_reads_every_format_to_the_same_matrix(tmp_path):
    X, genes, cells = _small_counts()
    dense = X.toarray()
    # h5ad, counts in a layer
    adata = ad.AnnData(
        X=sp.csr_matrix(np.log1p(dense)),
        obs=pd.DataFrame(index=cells),
        var=pd.DataFrame(index=genes),
        layers={"raw_counts": X},
    )
    adata.write_h5ad(tmp_path / "a.h5ad")
    # csv (cells × genes) and tsv (genes × cells, needs transpose)
    pd.DataFrame(dense, index=cells, columns=genes).to_csv(tmp_path / "a.csv")
    pd.DataFrame(dense.T, index=genes, columns=cells).to_csv(tmp_path / "a.tsv", sep="\t")
    # 10x mtx directory (genes × cells, gzipped)
    mtx = tmp_path / "mtx"
    mtx.mkdir()
    scipy.io.mmwrite(mtx / "matrix.mtx", sp.coo_matrix(X.T))
    pd.DataFrame({"id": genes, "name": genes, "type": "Gene Expression"}).to_csv(
        mtx / "features.tsv", sep="\t", header=False, index=False
    )
    pd.Series(cells).to_csv(mtx / "barcodes.tsv", header=False, index=False)
    import gzip
    import shutil

    for name in ("matrix.mtx", "features.tsv", "barcodes.tsv"):
        with open(mtx / name, "rb") as src, gzip.open(mtx / f"{name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        (mtx / name).unlink()
    # 10x HDF5 (Cell Ranger v3 layout: genes × cells CSC)
    csc = sp.csc_matrix(X.T)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = csc.data.astype(np.int32), csc.indices, csc.indptr
        m["shape"] = np.array(csc.shape)
        m["barcodes"] = np.array(cells, dtype="S")
        feats = m.create_group("features")
        feats["id"] = feats["name"] = np.array(genes, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * 5, dtype="S")
        feats["genome"] = np.array(["g"] * 5, dtype="S")
    reads = {
        "h5ad": read_counts(tmp_path / "a.h5ad", counts="raw_counts"),
        "csv": read_counts(tmp_path / "a.csv"),
        "tsv": read_counts(tmp_path / "a.tsv", transpose=True),
        "mtx": read_counts(mtx),
        "h5": read_counts(tmp_path / "a.h5"),
    }
    for kind, got in reads.items():
        assert sp.isspmatrix_csr(got.X), kind
        np.testing.assert_array_equal(got.X.toarray(), dense, err_msg=kind)
        assert list(got.var_names) == genes, kind
        assert list(got.obs_names) == cells, kind


def test_unknown_counts_layer_lists_layers(tmp_path):
    X, genes, cells = _small_counts()
    ad.AnnData(X=X, layers={"spliced": X}).write_h5ad(tmp_path / "a.h5ad")
    with pytest.raises(InputError, match=r"layers: spliced"):
        read_counts(tmp_path / "a.h5ad", counts="counts")


def test_duplicate_gene_names_made_unique(pbmc_small):
    adata = pbmc_small.copy()
    names = adata.var_names.to_numpy().copy()
    names[1] = names[0]
    adata.var_names = names
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = preprocess(adata, SMALL, dataset="t", label_key=None, mito_prefix="MT-")
    assert any("1 duplicate gene names made unique" in str(w.message) for w in caught)
    assert out.var_names.is_unique


def test_training_clusters_ignore_held_out_cells(pbmc_small):
    from scae.config import CLUSTER_KEY

    out = preprocess(
        pbmc_small, SMALL, dataset="t", label_key="cell_type", mito_prefix="MT-", clusters=True
    )
    clusters = out.obs[CLUSTER_KEY]
    assert clusters.nunique() >= 3
    # clusters agree with the annotated cell types far beyond chance
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(out.obs["cell_type"], clusters) > 0.3
    # moving the test cells elsewhere leaves the training cells' clusters unchanged
    from scae.data.clusters import training_clusters

    is_train = (out.obs["split"] == "train").to_numpy()
    shifted = out.X.copy().tolil()
    for row in np.flatnonzero(out.obs["split"] == "test"):
        shifted[row, :20] = 9.0
    again = training_clusters(shifted.tocsr(), is_train, seed=0)
    assert (np.asarray(again)[is_train] == clusters.to_numpy()[is_train]).all()


# --------------------------------------------------------------------------------------------
# depth variants: binomial thinning


def test_binomial_thinning_keeps_each_molecule_with_the_fraction_whatever_the_blocks():
    from scae.data.mcv import binomial_thin

    counts = sp.random(400, 300, density=0.3, random_state=0, format="csr", dtype=np.float32)
    counts.data = np.ceil(counts.data * 20)
    whole = binomial_thin(counts, 0.25, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    blocks = sp.vstack([binomial_thin(counts[a : a + 37], 0.25, rng) for a in range(0, 400, 37)])
    assert (whole != blocks).nnz == 0  # one generator through the blocks: the same draws
    assert (whole <= counts).toarray().all() and whole.nnz < counts.nnz  # zeros dropped
    assert whole.sum() / counts.sum() == pytest.approx(0.25, abs=0.01)
    assert (binomial_thin(counts, 0.25, 8) != whole).nnz > 0  # the seed matters


def test_a_thinned_dataset_is_the_same_cells_at_a_fraction_of_their_depth(tmp_path, monkeypatch):
    import scae.data
    from scae.data.params import Thinning
    from scae.data.preprocess import preprocess_file
    from scae.data.readers import open_counts

    from .conftest import pbmc_subset

    path = tmp_path / "p.h5ad"
    pbmc_subset(300).write_h5ad(path)
    loose = PreprocessParams(min_genes=10, max_pct_mito=100, n_top_genes=300)
    full = preprocess_file(path, loose, DatasetOptions("p", "cell_type"))
    thin = preprocess_file(
        path, loose, DatasetOptions("p", "cell_type", thin=Thinning(0.25, seed=3))
    )
    assert thin.uns["scae"]["thin"] == {"fraction": 0.25, "seed": 3}
    cells = full.obs_names.intersection(thin.obs_names)
    assert len(cells) == full.n_obs  # loose QC: every cell is kept at a quarter of its depth
    ratio = thin.obs.loc[cells, "library_size"] / full.obs.loc[cells, "library_size"]
    assert ratio.median() == pytest.approx(0.25, abs=0.02)
    # every pass over the rows sees the same thinned counts, in any block size
    with open_counts(path) as rows:
        rows.thinning = Thinning(0.25, seed=3)
        first = sp.vstack([block for _, block in rows.blocks()])
        again = sp.vstack([block for _, block in rows.blocks(max_nnz=1 << 12)])
    assert (first != again).nnz == 0
    # its own random stream: not the molecule split's (mcv.seed) of the same seed
    with open_counts(path) as rows:
        stored = sp.vstack([block for _, block in rows.blocks()])
    from scae.data.mcv import binomial_thin

    assert (binomial_thin(stored, 0.25, 3) != first).nnz > 0
    monkeypatch.setattr(scae.data.readers, "CHUNK_NNZ", 1 << 12)
    small_blocks = preprocess_file(
        path, loose, DatasetOptions("p", "cell_type", thin=Thinning(0.25, seed=3))
    )
    assert (small_blocks.layers["counts"] != thin.layers["counts"]).nnz == 0
