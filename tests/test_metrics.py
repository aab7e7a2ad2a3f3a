"""Metrics and baselines against sklearn / scipy / numpy computations."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats
from scipy.special import gammaln
from sklearn.metrics.pairwise import paired_cosine_distances

from scae.data.mcv import HELDOUT_LAYER, binomial_split
from scae.evaluation.baselines import (
    baseline_outputs,
    fit_pca,
    mcv_rank_curve,
    mean_reconstruction,
    pca_embed_and_reconstruct,
    pca_mcv_rank,
)
from scae.evaluation.mcv import mcv_metrics
from scae.evaluation.metrics import (
    THETA_RANGE,
    breakdowns,
    count_nll,
    embedding_metrics,
    expected_counts,
    median_gene_pearson,
    moment_dispersion,
    per_cell_metrics,
    rowwise_cosine,
    summarize_reconstruction,
)


@pytest.fixture
def truth_and_recon():
    rng = np.random.default_rng(0)
    truth = sp.random(50, 40, density=0.3, random_state=rng, format="csr", dtype=np.float64)
    recon = truth.toarray() + rng.normal(scale=0.2, size=(50, 40))
    return truth, recon


def test_cosine_matches_sklearn(truth_and_recon):
    truth, recon = truth_and_recon
    expected = 1 - paired_cosine_distances(recon, truth.toarray())
    np.testing.assert_allclose(rowwise_cosine(recon, truth.toarray()), expected, rtol=1e-12)


def test_cosine_of_zero_cell_is_zero_not_nan():
    a = np.zeros((2, 3))
    b = np.ones((2, 3))
    assert (rowwise_cosine(a, b) == 0).all()


def test_per_cell_metrics_against_scipy(truth_and_recon, monkeypatch):
    truth, recon = truth_and_recon
    monkeypatch.setattr("scae.evaluation.metrics.CHUNK", 7)  # exercise chunking
    mean = truth.toarray()[:10].mean(axis=0)
    table = per_cell_metrics(truth, recon, mean)
    dense = truth.toarray()
    for i in (0, 17, 49):
        assert table["pearson"][i] == pytest.approx(stats.pearsonr(recon[i], dense[i])[0])
        assert table["mse"][i] == pytest.approx(((recon[i] - dense[i]) ** 2).mean())
        centred = 1 - paired_cosine_distances([recon[i] - mean], [dense[i] - mean])[0]
        assert table["centred_cosine"][i] == pytest.approx(centred)


def test_median_gene_pearson_against_numpy(truth_and_recon, monkeypatch):
    truth, recon = truth_and_recon
    monkeypatch.setattr("scae.evaluation.metrics.CHUNK", 9)
    dense = truth.toarray()
    dense[:, 3] = 0  # a constant gene is skipped
    expected = np.median([np.corrcoef(recon[:, g], dense[:, g])[0, 1] for g in range(40) if g != 3])
    assert median_gene_pearson(sp.csr_matrix(dense), recon) == pytest.approx(expected)


def test_summary_quartiles(truth_and_recon):
    truth, recon = truth_and_recon
    table = per_cell_metrics(truth, recon, np.zeros(40))
    summary = summarize_reconstruction(table, truth, recon)
    assert summary["cosine_median"] == pytest.approx(np.median(table["cosine"]))
    assert summary["cosine_q25"] <= summary["cosine_median"] <= summary["cosine_q75"]


def test_pca_baseline_matches_dense_svd():
    rng = np.random.default_rng(1)
    x = sp.random(200, 30, density=0.4, random_state=rng, format="csr")
    train, k = x[:150], 5
    pca = fit_pca(train, k, seed=0)
    scores, recon = pca_embed_and_reconstruct(pca, x, np.arange(150, 200))
    dense = train.toarray()
    mean = dense.mean(axis=0)
    _, _, vt = np.linalg.svd(dense - mean, full_matrices=False)
    v = vt[:k].T
    expected = mean + (x[150:].toarray() - mean) @ v @ v.T
    np.testing.assert_allclose(recon, expected, atol=1e-5)
    assert scores.shape == (200, k)


def test_mean_baseline_repeats_profile():
    recon = mean_reconstruction(np.array([1.0, 2.0]), 3)
    assert recon.shape == (3, 2) and (recon == [1.0, 2.0]).all()


def test_embedding_metrics_separate_clear_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(3, 8))
    labels = np.repeat(["a", "b", "c"], 60)
    emb = centres[np.repeat([0, 1, 2], 60)] + rng.normal(size=(180, 8))
    split = np.where(np.arange(180) % 5 == 0, "test", "train")
    good = embedding_metrics(emb, pd.Series(labels), split)
    assert good["knn_accuracy"] == 1.0
    assert good["leiden_ari_test"] > 0.5 and good["label_silhouette_test"] > 0.5
    noise = embedding_metrics(rng.normal(size=(180, 8)), pd.Series(labels), split)
    assert noise["knn_accuracy"] < 0.7 and noise["label_silhouette_test"] < 0.1


def test_clustering_metrics_see_test_cells_only():
    """Scrambling the training cells' embedding changes the kNN classifier (its reference) but
    not the test-cell clustering, ARI/NMI or silhouette; these match sklearn on test cells."""
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(1)
    labels = np.repeat(["a", "b", "c"], 80)
    emb = rng.normal(scale=6, size=(3, 8))[np.repeat([0, 1, 2], 80)] + rng.normal(size=(240, 8))
    split = np.where(np.arange(240) % 4 == 0, "test", "train")
    scrambled = emb.copy()
    scrambled[split == "train"] = rng.permutation(scrambled[split == "train"])
    before = embedding_metrics(emb, pd.Series(labels), split)
    after = embedding_metrics(scrambled, pd.Series(labels), split)
    for metric in (
        "leiden_ari_test",
        "leiden_nmi_test",
        "label_silhouette_test",
        "n_leiden_clusters_test",
    ):
        assert after[metric] == before[metric], metric
    assert after["knn_accuracy"] < before["knn_accuracy"]
    test = split == "test"
    assert before["label_silhouette_test"] == pytest.approx(
        silhouette_score(emb[test], labels[test], metric="cosine")
    )


def test_count_nll_matches_scipy():
    rng = np.random.default_rng(2)
    counts = rng.poisson(2.0, size=(20, 15)).astype(float)
    mu = rng.gamma(2.0, 1.5, size=(20, 15))
    theta = rng.gamma(2.0, 2.0, size=15)
    values = count_nll(sp.csr_matrix(counts), mu, theta)
    poisson = -stats.poisson.logpmf(counts, mu).sum(axis=1).mean()
    nb = -stats.nbinom.logpmf(counts, theta, theta / (theta + mu)).sum(axis=1).mean()
    assert values["poisson_nll"] == pytest.approx(poisson, rel=1e-7)  # ε = MU_EPS in log μ
    assert values["nb_nll"] == pytest.approx(nb, rel=1e-6)


def test_poisson_nll_agrees_with_torch_argument_order():
    """torch's poisson_nll_loss takes the prediction first (input=μ) and the counts second."""
    import torch

    rng = np.random.default_rng(3)
    counts = rng.poisson(3.0, size=(10, 8)).astype(float)
    mu = rng.gamma(2.0, 1.5, size=(10, 8))
    ours = count_nll(sp.csr_matrix(counts), mu, np.ones(8))["poisson_nll"]
    reference = (
        torch.nn.functional.poisson_nll_loss(
            torch.tensor(mu), torch.tensor(counts), log_input=False, full=False, reduction="sum"
        ).item()
        / 10
    )
    stirling_free = ours - gammaln(counts + 1).sum() / 10  # torch's full=False drops log c!
    assert stirling_free == pytest.approx(reference, rel=1e-9)


def test_expected_counts_invert_log_normalization():
    counts = np.array([[0.0, 3.0, 7.0], [1.0, 0.0, 9.0]])
    library = counts.sum(axis=1)
    x = np.log1p(counts / library[:, None] * 1e4)
    np.testing.assert_allclose(expected_counts(x, library, 1e4), counts, atol=1e-9)
    assert (expected_counts(np.full((1, 3), -2.0), np.ones(1), 1e4) == 0).all()


def test_moment_dispersion():
    rng = np.random.default_rng(4)
    theta, mean = 2.0, 5.0
    counts = rng.negative_binomial(theta, theta / (theta + mean), size=(20000, 2)).astype(float)
    counts[:, 1] = 3.0  # underdispersed: clipped to the Poisson end
    estimate = moment_dispersion(sp.csr_matrix(counts))
    assert estimate[0] == pytest.approx(theta, rel=0.1)
    assert estimate[1] == THETA_RANGE[1]


def test_breakdowns_by_expression_decile_and_library_quartile():
    truth = np.zeros((8, 20))
    recon = np.zeros((8, 20))
    recon[:, 18:] = 1.0  # error only in the two most expressed genes
    gene_mean = np.arange(20.0)
    per_cell = pd.DataFrame({"cosine": np.arange(8.0)})
    values = breakdowns(truth, recon, per_cell, gene_mean, library_size=np.arange(8.0))
    assert values["mse_expr_decile_10"] == 1.0
    assert all(values[f"mse_expr_decile_{d:02d}"] == 0 for d in range(1, 10))
    assert values["cosine_library_q1"] == 0.5 and values["cosine_library_q4"] == 6.5


def test_binomial_split_preserves_totals_exactly():
    rng = np.random.default_rng(5)
    counts = sp.random(300, 200, density=0.2, random_state=rng, format="csr")
    counts.data = np.ceil(counts.data * 50).astype(np.float32)
    train, heldout = binomial_split(counts, 0.9, seed=1)
    assert (train + heldout != counts).nnz == 0
    assert train.data.min() > 0 and heldout.data.min() > 0
    fraction = train.sum() / counts.sum()
    assert fraction == pytest.approx(0.9, abs=0.005)
    again, _ = binomial_split(counts, 0.9, seed=1)
    assert (again != train).nnz == 0


def test_mcv_metrics_reward_the_true_profile():
    rng = np.random.default_rng(6)
    profile = rng.dirichlet(np.ones(50))
    library = rng.integers(2000, 6000, size=200)
    counts = sp.csr_matrix(rng.poisson(library[:, None] * profile).astype(float))
    train, heldout = binomial_split(counts, 0.9, seed=0)
    train_lib = np.asarray(train.sum(1)).ravel()
    held_lib = np.asarray(heldout.sum(1)).ravel()
    noisy = np.log1p(train.toarray() / train_lib[:, None] * 1e4)
    truth = np.log1p(np.tile(profile * 1e4, (200, 1)))
    theta = np.full(50, 1e4)
    denoised = mcv_metrics(heldout, truth, train_lib, held_lib, 1e4, theta)
    raw = mcv_metrics(heldout, noisy, train_lib, held_lib, 1e4, theta)
    assert denoised["mcv_mse"] < raw["mcv_mse"]
    assert denoised["mcv_poisson_nll"] < raw["mcv_poisson_nll"]


def test_mcv_rank_curve_matches_pca_at_each_rank():
    rng = np.random.default_rng(7)
    x = sp.random(120, 25, density=0.5, random_state=rng, format="csr")
    target = sp.random(30, 25, density=0.3, random_state=rng, format="csr")
    curve = mcv_rank_curve(fit_pca(x[:90], 6, seed=0), x[90:], target)
    for k in (1, 3, 6):
        _, recon = pca_embed_and_reconstruct(fit_pca(x[:90], k, seed=0), x, np.arange(90, 120))
        assert curve[k - 1] == pytest.approx(((recon - target.toarray()) ** 2).mean(), rel=1e-5)


def _mcv_adata(rng, n_cells=300, n_genes=40, depth=400):
    """Cells of three types with Poisson counts, split into c' (X, log-normalized) and c''."""
    import anndata as ad

    profiles = rng.dirichlet(np.ones(n_genes) * 0.5, size=3)
    kind = rng.integers(0, 3, n_cells)
    counts = sp.csr_matrix(rng.poisson(depth * profiles[kind]).astype(np.float32))
    train_counts, heldout = binomial_split(counts, 0.9, seed=0)
    library = np.asarray(train_counts.sum(axis=1)).ravel()
    x = sp.csr_matrix(sp.diags(1e4 / np.maximum(library, 1)) @ train_counts)
    x.data = np.log1p(x.data)
    split = np.array(["train", "val", "test"])[rng.choice(3, n_cells, p=[0.6, 0.2, 0.2])]
    adata = ad.AnnData(X=x, layers={"counts": train_counts, HELDOUT_LAYER: heldout})
    adata.obs["split"] = split
    adata.obs["library_size"] = library
    adata.obs["mcv_library_size"] = np.asarray(heldout.sum(axis=1)).ravel()
    adata.uns["scae"] = {"target_sum": 1e4}
    return adata


def test_pca_mcv_rank_ignores_test_cells():
    adata = _mcv_adata(np.random.default_rng(8))
    rank = pca_mcv_rank(adata, max_rank=15, seed=0)
    assert 1 <= rank <= 15
    test = np.flatnonzero(adata.obs["split"] == "test")
    changed = adata.copy()
    for layer in ("X", HELDOUT_LAYER):
        matrix = (changed.X if layer == "X" else changed.layers[layer]).tolil()
        matrix[test] = np.random.default_rng(9).poisson(3.0, (len(test), adata.n_vars))
        if layer == "X":
            changed.X = matrix.tocsr()
        else:
            changed.layers[layer] = matrix.tocsr()
    changed.obs.loc[changed.obs_names[test], "mcv_library_size"] = 1.0
    assert pca_mcv_rank(changed, max_rank=15, seed=0) == rank
    latent, recon = baseline_outputs("pca_mcv_rank", adata, 32, 0, max_pca_rank=15)
    assert latent.shape == (adata.n_obs, rank) and recon.shape == (len(test), adata.n_vars)
    without_heldout = adata.copy()
    del without_heldout.layers[HELDOUT_LAYER]
    with pytest.raises(ValueError, match="only for the molecular cross-validation variant"):
        pca_mcv_rank(without_heldout, 15, 0)


@pytest.mark.parametrize("median_umis, mean_wins", [(None, False), (250, True)])
def test_mcv_mse_rewards_the_mean_profile_at_low_depth(median_umis, mean_wins):
    """pbmc3k at full depth (≈ 2200 UMIs per cell) and binomially thinned to ≈ 250: with few
    held-out molecules, log-space mcv_mse prefers the training-mean profile to any PCA —
    the case the summary flags as "cannot discriminate"."""
    import anndata as ad

    from scae.data.params import MCVParams, PreprocessParams
    from scae.data.preprocess import preprocess

    from .conftest import PBMC3K

    raw = ad.read_h5ad(PBMC3K)
    raw.X = sp.csr_matrix(raw.X)
    if median_umis:
        depth = np.median(np.asarray(raw.X.sum(axis=1)).ravel())
        raw.X, _ = binomial_split(raw.X, median_umis / depth, seed=1)
    data = preprocess(
        raw,
        PreprocessParams(min_genes=50, n_top_genes=1000),
        dataset="pbmc.mcv",
        label_key="cell_type",
        mito_prefix="MT-",
        mcv=MCVParams(0.9, 0),
    )
    test = (data.obs["split"] == "test").to_numpy()
    scores = {}
    for name in ("mean", "pca", "pca_mcv_rank"):
        _, recon = baseline_outputs(name, data, 32, 0, max_pca_rank=60)
        scores[name] = mcv_metrics(
            data.layers[HELDOUT_LAYER][test],
            np.asarray(recon),
            data.obs["library_size"].to_numpy()[test],
            data.obs["mcv_library_size"].to_numpy()[test],
            1e4,
            np.full(data.n_vars, 1e4),
        )["mcv_mse"]
    rank = pca_mcv_rank(data, 60, 0)
    assert rank < 32  # MCV picks a smaller rank than the latent dim on these data
    assert (scores["mean"] < min(scores["pca"], scores["pca_mcv_rank"])) == mean_wins, scores


def test_zscored_cosine_is_the_cosine_after_standard_scaling():
    """Against sklearn: StandardScaler fit on training cells, then the paired cosine. (Its sd
    has ddof 0, ours ddof 1: one factor for every gene, which the cosine ignores.)"""
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    train = rng.gamma(2.0, 1.0, size=(300, 40)) * rng.uniform(0.1, 3, size=40)
    truth, recon = train[:50] + rng.normal(0, 0.3, (50, 40)), train[:50]
    mean, std = train.mean(axis=0), train.std(axis=0, ddof=1)
    ours = per_cell_metrics(sp.csr_matrix(truth), recon, mean, std)["zscored_cosine"]
    scaler = StandardScaler().fit(train)
    reference = 1 - paired_cosine_distances(scaler.transform(recon), scaler.transform(truth))
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-9)
    # the training-mean profile carries no direction there: it scores 0
    flat = per_cell_metrics(sp.csr_matrix(truth), np.tile(mean, (50, 1)), mean, std)
    np.testing.assert_allclose(flat["zscored_cosine"], 0, atol=1e-12)


def test_zscored_pca_is_pca_of_standardized_training_cells():
    """Against sklearn on the dense standardized matrix: the same reconstruction, and it
    beats log-space PCA on the z-scored MSE it is optimal for."""
    from sklearn.decomposition import PCA

    from scae.evaluation.baselines import zscored_pca

    rng = np.random.default_rng(5)
    x = rng.gamma(1.0, 1.0, size=(200, 30)) * rng.uniform(0.05, 4, size=30)
    x[rng.random(x.shape) < 0.5] = 0
    train = np.arange(200) < 150
    std = x[train].std(axis=0, ddof=1)
    rows = np.arange(150, 200)
    _, ours = zscored_pca(sp.csr_matrix(x), train, std, 5, 0, rows)
    mean = x[train].mean(axis=0)
    reference = PCA(5, svd_solver="full").fit((x[train] - mean) / std)
    expected = reference.inverse_transform(reference.transform((x[rows] - mean) / std))
    np.testing.assert_allclose((ours - mean) / std, expected, rtol=1e-4, atol=1e-4)
    log_space = PCA(5, svd_solver="full").fit(x[train])
    plain = log_space.inverse_transform(log_space.transform(x[rows]))
    truth = (x[rows] - mean) / std
    assert ((expected - truth) ** 2).mean() < (((plain - mean) / std - truth) ** 2).mean()
