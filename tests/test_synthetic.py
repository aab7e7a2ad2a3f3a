"""The seeded synthetic count generator, and the sparse training path it is used to benchmark:
count likelihoods on sparse minibatches equal the dense ones, and counts are never densified."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scae.data.checks import validate_counts
from scae.data.params import PreprocessParams
from scae.data.preprocess import preprocess
from scae.data.readers import read_counts
from scae.data.synthetic import SyntheticParams, _profiles, synthetic_counts, write_synthetic
from scae.module.batch import Batch, DecoderOutput, SparseCounts
from scae.module.losses import LOSSES, get_loss
from scae.module.network import AutoencoderModule, ModelParams
from scae.train.cells import CellData
from scae.train.trainer import TrainParams, fit

SMALL = SyntheticParams(n_cells=600, n_genes=300, n_types=4, seed=3)


@pytest.fixture(scope="module")
def small():
    return synthetic_counts(SMALL)


def test_shape_types_and_labels(small):
    X = small.X
    assert sp.isspmatrix_csr(X) and X.dtype == np.float32 and X.has_canonical_format
    assert X.shape == (SMALL.n_cells, SMALL.n_genes)
    assert (X.data >= 1).all() and (X.data == np.round(X.data)).all()  # stored non-zeros only
    labels = small.obs["cell_type"]
    assert labels.dtype == "category" and labels.nunique() == SMALL.n_types
    assert 0.03 < X.nnz / (X.shape[0] * X.shape[1]) < 0.3  # UMI-like sparsity


def test_seeded(small):
    again = synthetic_counts(SMALL)
    assert (small.X != again.X).nnz == 0
    assert (small.obs["cell_type"] == again.obs["cell_type"]).all()
    other = synthetic_counts(SyntheticParams(**{**vars(SMALL), "seed": 4}))
    assert (small.X != other.X).nnz > 0


def test_counts_follow_the_negative_binomial():
    """Per gene, within one cell type: mean ℓ·p and variance ℓp + (ℓp)²/θ (plus the spread
    of ℓ), checked on the genes with enough signal."""
    params = SyntheticParams(n_cells=6000, n_genes=200, n_types=2, seed=1)
    adata = synthetic_counts(params)
    _, profiles, theta = _profiles(params, np.random.default_rng(params.seed))
    cells = (adata.obs["cell_type"] == "type00").to_numpy()
    counts = adata.X[cells].toarray()
    mu = adata.obs["library_mean"].to_numpy()[cells, None] * profiles[0][None, :]
    genes = mu.mean(axis=0) > 0.5
    mean_ratio = counts.mean(axis=0)[genes] / mu.mean(axis=0)[genes]
    expected_var = (mu + mu**2 / theta).mean(axis=0) + mu.var(axis=0)
    var_ratio = counts.var(axis=0)[genes] / expected_var[genes]
    assert genes.sum() > 20
    assert abs(np.median(mean_ratio) - 1) < 0.02
    assert abs(np.median(var_ratio) - 1) < 0.1
    # cell types differ: the marker genes make their mean profiles distinguishable
    other = adata.X[~cells].toarray().mean(axis=0)
    assert np.corrcoef(np.log1p(counts.mean(axis=0)), np.log1p(other))[0, 1] < 0.99


def test_written_file_passes_the_workflow_input_checks(tmp_path):
    path = write_synthetic(tmp_path / "syn.h5ad", SMALL)
    adata = read_counts(path)
    validate_counts(adata.X, str(path), "syn", require_integers=True)
    result = preprocess(
        adata,
        PreprocessParams(min_genes=10, n_top_genes=200),
        dataset="syn",
        label_key="cell_type",
        mito_prefix=None,
    )
    assert result.n_vars == 200 and set(result.obs["split"]) == {"train", "val", "test"}


def test_written_file_is_streamed_block_by_block(tmp_path):
    """write_synthetic appends each block: the file holds synthetic_counts' matrix, and the
    traced peak while writing (NumPy and SciPy arrays; torch's dense draws are untraced but
    one block in size) stays far below the matrix itself."""
    import tracemalloc

    import anndata as ad

    params = SyntheticParams(n_cells=8000, n_genes=3000, median_library=2000, seed=5)
    tracemalloc.start()
    try:
        write_synthetic(tmp_path / "s.h5ad", params, chunk_cells=250)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = synthetic_counts(params, chunk_cells=250)
    written = ad.read_h5ad(tmp_path / "s.h5ad")
    assert (written.X != expected.X).nnz == 0
    assert (written.obs == expected.obs).all().all()
    assert peak < expected.X.nnz * 8 / 4  # the CSR arrays are nnz × 8 bytes


def test_depth_sets_umis_and_detected_genes(tmp_path):
    """--depth is the median UMIs per cell; at 2000 over many genes ~half the UMIs are in
    genes seen once (10x-like: ~1000 genes detected per 2000 UMIs at 28 k genes)."""
    from scae.data.synthetic import main

    main([str(tmp_path / "d.h5ad"), "--cells", "400", "--genes", "8000", "--depth", "2000"])
    adata = read_counts(tmp_path / "d.h5ad")
    umis = np.asarray(adata.X.sum(axis=1)).ravel()
    assert 1800 < np.median(umis) < 2200
    detected = np.diff(adata.X.indptr)
    assert 600 < np.median(detected) < 1200


# --- the sparse training path ---------------------------------------------------------------


@pytest.fixture(scope="module")
def preprocessed(small):
    return preprocess(
        small,
        PreprocessParams(min_genes=10, n_top_genes=200),
        dataset="syn",
        label_key="cell_type",
        mito_prefix=None,
    )


@pytest.mark.parametrize("name", [n for n, s in LOSSES.items() if s.uses_counts])
@pytest.mark.parametrize("dispersion", ["gene", "gene-cell"])
def test_sparse_minibatch_loss_equals_dense(preprocessed, name, dispersion):
    """A real minibatch from CellData (sparse counts) gives the loss and the gradients of the
    same minibatch with dense counts."""
    data = CellData(preprocessed, "none")
    rows = data.rows("train")[:64]
    inputs, batch, library = data.batch(rows, with_counts=True)
    assert batch.counts is None and isinstance(batch.sparse_counts, SparseCounts)
    dense = torch.from_numpy(data.counts[rows].toarray())
    torch.testing.assert_close(batch.sparse_counts.to_dense(), dense)
    torch.manual_seed(0)
    model = AutoencoderModule(
        ModelParams(
            n_genes=data.n_genes,
            hidden=(32,),
            latent_dim=4,
            output=LOSSES[name].output,
            dispersion=dispersion,
        )
    ).eval()
    spec = get_loss(name)
    results = []
    for target in (batch, Batch(x=batch.x, counts=dense)):
        model.zero_grad()
        loss = spec.fn(model(inputs, library), target, {})
        loss.mean().backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (sparse_loss, sparse_grads), (dense_loss, dense_grads) = results
    torch.testing.assert_close(sparse_loss, dense_loss, rtol=1e-5, atol=1e-3)
    for a, b in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sparse_counts_cover_large_and_fractional_counts():
    """The lgamma table serves integer counts ≤ 32; larger and fractional ones are exact too."""
    counts = torch.tensor(
        [[0.0, 1.0, 31.0, 32.0, 33.0, 1000.0], [2.5, 0.0, 1.0, 0.0, 7.0, 0.0]], dtype=torch.float64
    )
    mu = torch.rand(2, 6, dtype=torch.float64) * 50 + 0.1
    for theta in (
        torch.rand(6, dtype=torch.float64) * 5 + 0.01,
        torch.full((6,), 3e6, dtype=torch.float64),
    ):
        for name in ("nb", "zinb"):
            out = DecoderOutput(
                mu=mu, theta=theta, dropout_logits=torch.zeros(2, 6, dtype=torch.float64)
            )
            dense = get_loss(name).fn(out, Batch(x=counts, counts=counts), {})
            sparse = get_loss(name).fn(
                out, Batch(x=counts, sparse_counts=SparseCounts.from_dense(counts)), {}
            )
            torch.testing.assert_close(sparse, dense, rtol=1e-9, atol=1e-6)


def test_training_never_densifies_the_counts(preprocessed, monkeypatch):
    """Count losses train on sparse counts: only minibatches of the input are densified."""
    calls = []
    real_toarray = sp.csr_matrix.toarray

    def recorded(self, *args, **kwargs):
        calls.append(self.shape[0])
        return real_toarray(self, *args, **kwargs)

    data = CellData(preprocessed, "none")
    monkeypatch.setattr(sp.csr_matrix, "toarray", recorded)
    params = ModelParams(n_genes=data.n_genes, hidden=(16,), latent_dim=4, output="zinb")
    fit(
        data,
        get_loss("zinb"),
        {},
        params,
        TrainParams(batch_size=64, max_epochs=2),
        0,
        torch.device("cpu"),
    )
    n_batches = 2 * (int(np.ceil(len(data.rows("train")) / 64)) + 1)  # input minibatches
    assert len(calls) <= n_batches and max(calls) <= 64  # input only, never the counts


@pytest.mark.parametrize("name", [n for n, s in LOSSES.items() if s.uses_counts])
@pytest.mark.parametrize("per_gene", [True, False])
def test_sparse_count_losses_gradcheck(name, per_gene):
    """The sparse count likelihoods' gradients (θ per gene and per cell) against finite
    differences."""
    gen = torch.Generator().manual_seed(0)
    counts = torch.tensor(
        [[0.0, 1.0, 2.0, 0.0, 40.0], [3.0, 0.0, 0.0, 1.5, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]],
        dtype=torch.float64,
    )
    mu = (torch.rand(3, 5, generator=gen, dtype=torch.float64) * 5 + 0.1).requires_grad_()
    shape = (5,) if per_gene else (3, 5)
    theta = (torch.rand(*shape, generator=gen, dtype=torch.float64) * 3 + 0.2).requires_grad_()
    logits = torch.randn(3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    sparse = SparseCounts.from_dense(counts)
    spec = get_loss(name)

    def loss(mu, theta, logits):
        out = DecoderOutput(mu=mu, theta=theta, dropout_logits=logits)
        return spec.fn(out, Batch(x=counts, sparse_counts=sparse), {})

    assert torch.autograd.gradcheck(loss, (mu, theta, logits))
