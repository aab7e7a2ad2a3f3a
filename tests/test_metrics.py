"""Metrics and baselines against sklearn / scipy / numpy computations."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats
from sklearn.metrics.pairwise import paired_cosine_distances

from scae.baselines import fit_pca, mean_reconstruction, pca_embed_and_reconstruct
from scae.metrics import (
    embedding_metrics,
    median_gene_pearson,
    per_cell_metrics,
    rowwise_cosine,
    summarize_reconstruction,
)
from scae.summary import wide_summary


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
    monkeypatch.setattr("scae.metrics.CHUNK", 7)  # exercise chunking
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
    monkeypatch.setattr("scae.metrics.CHUNK", 9)
    dense = truth.toarray()
    dense[:, 3] = 0  # a constant gene is skipped
    expected = np.median(
        [np.corrcoef(recon[:, g], dense[:, g])[0, 1] for g in range(40) if g != 3]
    )
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
    assert good["leiden_ari"] > 0.5 and good["label_silhouette"] > 0.5
    noise = embedding_metrics(rng.normal(size=(180, 8)), pd.Series(labels), split)
    assert noise["knn_accuracy"] < 0.7 and noise["label_silhouette"] < 0.1


def test_wide_summary_keeps_baselines_last():
    tidy = pd.DataFrame({
        "dataset": "d",
        "model": ["mse", "mse", "baseline_pca", "cosine"],
        "kind": ["autoencoder", "autoencoder", "baseline", "autoencoder"],
        "seed": [0, 1, np.nan, 0],
        "metric": "cosine_mean",
        "value": [0.8, 0.81, 0.7, 0.9],
    })
    wide = wide_summary(tidy)
    assert list(wide["model"]) == ["cosine", "mse", "mse", "baseline_pca"]
    assert wide["seed"].isna().tolist() == [False, False, False, True]
