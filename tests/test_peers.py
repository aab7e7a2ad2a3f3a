"""The peers (scvi-tools' SCVI and LinearSCVI): trained on exactly the workflow's training and
validation cells, reconstructing in the common space as the workflow's count models do, and
scored beside the losses in a real workflow run."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from scae.peers import PeerSettings, fit_peer
from scae.registry import PEERS, kind_of, missing_packages

from .test_robustness import DATASET, small_config, snakemake, succeeded, write_config

pytest.importorskip("scvi")


@pytest.mark.parametrize("name", list(PEERS))
def test_a_peer_sees_the_workflow_split_and_maps_like_the_count_models(small_data, name):
    split = small_data.obs["split"].to_numpy()
    fit = fit_peer(name, small_data, 4, 0, PeerSettings(max_epochs=4), accelerator="cpu")
    assert sorted(fit.train_cells) == sorted(small_data.obs_names[split == "train"])
    assert sorted(fit.val_cells) == sorted(small_data.obs_names[split == "val"])
    assert fit.latent.shape == (small_data.n_obs, 4)
    assert list(fit.history["epoch"]) == [1, 2, 3, 4]
    assert (fit.history["max_epochs"] == 4).all()
    test = np.flatnonzero(split == "test")
    recon = fit.reconstruct(test)
    # expected counts over the HVGs at the observed HVG library, over the library of all kept
    # genes, × target_sum: per cell the expm1 totals are the truth's, gene by gene they differ
    counts = small_data.layers["counts"][test]
    expected = (
        np.asarray(counts.sum(axis=1)).ravel()
        / small_data.obs["library_size"].to_numpy()[test]
        * float(small_data.uns["scae"]["target_sum"])
    )
    np.testing.assert_allclose(np.expm1(recon.astype(np.float64)).sum(axis=1), expected, rtol=1e-3)
    np.testing.assert_allclose(
        np.expm1(np.asarray(small_data.X[test].toarray(), np.float64)).sum(axis=1),
        expected,
        rtol=1e-3,
    )


def test_the_epoch_cap_is_scvi_tools_default():
    """scvi-tools computes it in a private function: this notices when that changes."""
    from scvi.model._utils import get_max_epochs_heuristic

    for n_cells in (10, 2_638, 20_000, 50_000, 1_306_127):
        assert PeerSettings().cap(n_cells) == get_max_epochs_heuristic(n_cells)
    assert PeerSettings(max_epochs=7).cap(10) == 7


def test_a_missing_package_is_named_with_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scvi" else real(name, *a)
    )
    assert missing_packages(["scvi", "ldvae"])[0] == (
        "peers: scvi needs scvi-tools: pip install -e '.[peers]' or run with --use-conda"
    )
    assert missing_packages(["mse"]) == []


@pytest.fixture(scope="module")
def peer_run(tmp_path_factory):
    """A small real run with scVI beside mse, capped at 30 epochs."""
    workdir = tmp_path_factory.mktemp("peers")
    config = small_config(workdir, ["mse"])
    config["peers"] = ["scvi"]
    config["peer_train"] = {"max_epochs": 30, "early_stopping_patience": 5}
    succeeded(snakemake(workdir, write_config(workdir, config)))
    return workdir


@pytest.mark.workflow
def test_scvi_is_scored_beside_the_losses_and_pca(peer_run):
    results = peer_run / f"results/{DATASET}"
    summary = pd.read_csv(results / "summary.tsv", sep="\t")
    scvi = summary[summary["model"] == "scvi"]
    assert len(scvi) == 1 and scvi["kind"].iloc[0] == "peer" and kind_of("scvi") == "peer"
    assert scvi["centred_cosine_mean"].between(-1, 1).all()
    assert np.isfinite(scvi[["knn_accuracy", "poisson_nll", "embedding_dim"]]).all().all()
    assert scvi["embedding_dim"].iloc[0] == 4
    assert scvi["epochs"].iloc[0] <= 30 and not pd.isna(scvi["converged"].iloc[0])
    comparisons = pd.read_csv(results / "comparisons.tsv", sep="\t")
    answer = comparisons[comparisons["family"] == "answer"]
    assert (answer["reference"] == "scvi").sum() == 1  # the best loss against scVI
    assert "scvi" not in set(answer["model"])  # never ranked among the losses
    text = (results / "summary.md").read_text()
    assert "scVI at the same rank" in text
    ranks = pd.read_csv(results / "ranks.tsv", sep="\t")  # beside PCA-k in the rank table
    assert ranks["scvi_mean"].iloc[0] == pytest.approx(scvi["centred_cosine_mean"].iloc[0])
    assert "| verdict | scVI test |" in text
    for figure in ("rank_curve", "forest"):  # drawn with the peer in them
        assert (results / f"plots/{figure}.png").stat().st_size > 0
    # the embedding records the cells it was fit on: the workflow's training/validation cells
    import anndata as ad

    data = ad.read_h5ad(results / "preprocessed.h5ad")
    run = ad.read_h5ad(results / "k4/embeddings/scvi/seed0.h5ad").uns["scae_run"]
    split = data.obs["split"]
    assert sorted(run["train_cells"]) == sorted(data.obs_names[split == "train"])
    assert sorted(run["val_cells"]) == sorted(data.obs_names[split == "val"])
