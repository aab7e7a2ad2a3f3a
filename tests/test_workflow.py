"""The real workflow, end to end, on a small real subset of pbmc3k in a temporary directory."""

import numpy as np
import pandas as pd
import pytest
import yaml

from scae.module.losses import LOSSES
from scae.registry import baselines_in

from .conftest import SMALL_RUN_RANKS as RANKS
from .conftest import SMALL_RUN_SEEDS as SEEDS

pytestmark = pytest.mark.workflow


def test_summary_has_every_loss_seed_and_baseline(small_run):
    summary = pd.read_csv(small_run / "results/pbmc_small/summary.tsv", sep="\t")
    runs = set(zip(summary["model"], summary["seed"].fillna(-1).astype(int)))
    expected = {(loss, seed) for loss in LOSSES for seed in SEEDS}
    # the MCV variant's baselines (incl. no_denoising) contribute their mcv_* metrics
    expected |= {(model.name, -1) for model in baselines_in("mcv")}
    assert runs == expected
    # no_denoising and pca_mcv_rank exist only under MCV, so they have mcv_* metrics alone
    mcv_only = {m.name for m in baselines_in("mcv")} - {m.name for m in baselines_in("dataset")}
    assert mcv_only == {"baseline_no_denoising", "baseline_pca_mcv_rank"}
    assert summary.loc[summary["model"].isin(mcv_only), "cosine_mean"].isna().all()
    scored = summary[~summary["model"].isin(mcv_only)]
    for column in ["cosine_mean", "cosine_median", "centred_cosine_mean", "pearson_mean"]:
        assert scored[column].between(-1, 1).all(), column
    assert scored["mse"].gt(0).all()
    # MCV trains seed 0 only, at the reference rank (the largest); baselines without a rank
    mcv_runs = (summary["seed"].isna() | (summary["seed"] == 0)) & (
        summary["rank"].isna() | (summary["rank"] == max(RANKS))
    )
    assert summary.loc[mcv_runs, "mcv_mse"].gt(0).all()
    assert summary.loc[summary["rank"] == min(RANKS), "mcv_mse"].isna().all()


def test_mse_model_beats_the_mean_profile(small_run):
    summary = pd.read_csv(small_run / "results/pbmc_small/summary.tsv", sep="\t")
    by_model = summary.groupby("model")["mse"].mean()
    assert by_model["mse"] < by_model["baseline_mean"]
    # the mean profile cannot explain how a cell differs from the average cell
    mean_row = summary[summary["model"] == "baseline_mean"].iloc[0]
    assert abs(mean_row["centred_cosine_mean"]) < 1e-6


def test_label_metrics_present_for_models_with_embeddings(small_run):
    summary = pd.read_csv(small_run / "results/pbmc_small/summary.tsv", sep="\t")
    with_embedding = (summary["kind"] == "autoencoder") | (summary["model"] == "baseline_pca")
    has_embedding = summary[with_embedding]
    assert has_embedding["knn_accuracy"].between(0, 1).all()
    # an embedding of real PBMCs separates cell types far better than chance (1/9)
    assert has_embedding["knn_accuracy"].min() > 0.4


def test_embedding_and_reconstruction_files(small_run):
    import anndata as ad

    results = small_run / "results/pbmc_small"
    pre = ad.read_h5ad(results / "preprocessed.h5ad")
    emb = ad.read_h5ad(results / "k8/embeddings/nb/seed0.h5ad")
    assert emb.obsm["X_scae"].shape == (pre.n_obs, 8)
    recon = ad.read_h5ad(results / "k8/reconstructions/nb/seed0.h5ad")
    assert (recon.obs["split"] == "test").all() and recon.n_vars == pre.n_vars
    history = pd.read_csv(results / "k8/models/nb/seed0/history.tsv", sep="\t")
    assert {"train_loss", "val_loss", "val_cosine", "seconds"} <= set(history.columns)
    assert not (results / "k8/checkpoints/nb/seed0.pt").exists()


def test_pca_mcv_rank_records_its_rank(small_run):
    summary = pd.read_csv(small_run / "results/pbmc_small/summary.tsv", sep="\t")
    ranked = summary.dropna(subset=["rank"])
    # every autoencoder and PCA have the width of their rank
    assert (ranked["embedding_dim"] == ranked["rank"]).all()
    assert set(ranked.loc[ranked["model"] == "baseline_pca", "rank"]) == set(RANKS)
    dims = summary.groupby("model")["embedding_dim"].first()
    assert 1 <= dims["baseline_pca_mcv_rank"] <= 100
    assert summary.loc[summary["model"] == "baseline_pca_mcv_rank", "mcv_mse"].gt(0).all()
    log = (small_run / "logs/pbmc_small.mcv/shared/baseline/pca_mcv_rank.log").read_text()
    assert f"chosen rank {int(dims['baseline_pca_mcv_rank'])}" in log


def test_label_metrics_are_computed_on_test_cells_only(small_run):
    """The evaluate job's label metrics are evaluate_run's; scrambling the training cells'
    embedding moves only the kNN classifier, whose reference they are."""
    import anndata as ad

    from scae.evaluation.evaluate import evaluate_run

    results = small_run / "results/pbmc_small"
    data = ad.read_h5ad(results / "preprocessed.h5ad")
    embedding = ad.read_h5ad(results / "k8/embeddings/mse/seed0.h5ad")
    reconstruction = ad.read_h5ad(results / "k8/reconstructions/mse/seed0.h5ad")
    written = pd.read_csv(results / "k8/metrics/mse/seed0.tsv", sep="\t")
    written = written.set_index("metric")["value"]
    values, _ = evaluate_run(data, reconstruction, embedding, "cell_type")
    held_out = [
        "leiden_ari_test",
        "leiden_nmi_test",
        "label_silhouette_test",
        "n_leiden_clusters_test",
    ]
    for metric in [*held_out, "knn_accuracy"]:
        assert values[metric] == pytest.approx(written[metric], rel=1e-5), metric
    train = (data.obs["split"] == "train").to_numpy()
    scrambled = embedding.obsm["X_scae"].copy()
    scrambled[train] = np.random.default_rng(0).permutation(scrambled[train])
    embedding.obsm["X_scae"] = scrambled
    moved, _ = evaluate_run(data, reconstruction, embedding, "cell_type")
    assert all(moved[m] == values[m] for m in held_out)
    assert moved["knn_accuracy"] < values["knn_accuracy"]
    assert not {"leiden_ari", "leiden_nmi", "label_silhouette"} & set(written.index)


def test_summary_answers_with_intervals_and_seed_counts(small_run):
    results = small_run / "results/pbmc_small"
    text = (results / "summary.md").read_text()
    answer = next(line for line in text.splitlines() if line.startswith("**Answer:**"))
    assert "ranked by `centred_cosine_mean`" in answer and "over 2 seeds" in answer
    assert "PCA at the same rank" in answer and "training-mean profile" in answer
    assert "| mcv_mse (1 seed) |" in text  # mcv.seeds is [0], the other columns rest on 2
    comparisons = pd.read_csv(results / "comparisons.tsv", sep="\t")
    assert set(comparisons["verdict"]) <= {"better", "worse", "no difference"}
    assert (comparisons["ci_low"] <= comparisons["mean_difference"]).all()
    assert (comparisons["mean_difference"] <= comparisons["ci_high"]).all()
    paired = comparisons[comparisons["family"] == "paired"]
    assert len(paired) == len(RANKS) * 3 * (2 * len(LOSSES) - 1)
    assert (paired["n_seeds"] == 2).all()
    summary = pd.read_csv(results / "summary.tsv", sep="\t")
    runs = summary[summary["kind"] == "autoencoder"]
    max_epochs = yaml.safe_load((small_run / "config.yaml").read_text())["train"]["max_epochs"]
    assert runs["best_epoch"].between(1, max_epochs).all() and runs["converged"].all()


def test_every_rank_is_compared_with_pca_at_that_rank(small_run):
    results = small_run / "results/pbmc_small"
    ranks = pd.read_csv(results / "ranks.tsv", sep="\t").set_index("rank")
    assert list(ranks.index) == RANKS
    assert set(ranks["verdict"]) <= {"better", "worse", "no difference"}
    metrics = pd.read_csv(results / "metrics.tsv", sep="\t")
    primary = metrics[metrics["metric"] == "centred_cosine_mean"]
    for rank, row in ranks.iterrows():
        here = primary[primary["rank"] == rank]
        by_loss = here[here["kind"] == "autoencoder"].groupby("model")["value"].mean()
        assert row["best"] == by_loss.idxmax()
        assert row["best_mean"] == pytest.approx(by_loss.max(), rel=1e-5)
        pca = here.loc[here["model"] == "baseline_pca", "value"].item()
        assert row["pca_mean"] == pytest.approx(pca, rel=1e-5)
        assert row["ci_low"] <= row["mean_difference"] <= row["ci_high"]
    # a rank-2 PCA captures less than a rank-8 one, on test and on training cells
    assert ranks.loc[2, "pca_mean"] < ranks.loc[8, "pca_mean"]
    assert ranks.loc[2, "pca_train"] < ranks.loc[8, "pca_train"]
    # the training-cell scores are the train job's, for every run with a reconstruction
    train_rows = metrics[metrics["metric"] == "train_centred_cosine_mean"]
    assert set(train_rows["model"]) >= set(LOSSES) | {"baseline_pca", "baseline_mean"}
    assert train_rows.loc[train_rows["model"] == "baseline_mean", "value"].abs().max() < 1e-6
    # the baselines without a rank are scored once, and compared at every rank
    mean_rows = metrics[(metrics["model"] == "baseline_mean") & (metrics["metric"] == "mse")]
    assert len(mean_rows) == 1 and mean_rows["rank"].isna().all()
    comparisons = pd.read_csv(results / "comparisons.tsv", sep="\t")
    answer = comparisons[
        (comparisons["family"] == "answer") & (comparisons["reference"] == "baseline_mean")
    ]
    assert sorted(answer["rank"]) == RANKS
    assert not (small_run / "results/pbmc_small.mcv/k2").exists()  # MCV: reference rank only


def test_summary_and_figures_show_the_rank_answer(small_run):
    from PIL import Image

    results = small_run / "results/pbmc_small"
    text = (results / "summary.md").read_text()
    assert "## At which rank does an autoencoder beat PCA?" in text and "**Crossing:**" in text
    assert "## Rank k = 2\n" in text and "## Rank k = 8 (the reference rank" in text
    from scae.evaluation.findings import answer_record

    record = answer_record(results / "summary.md", text)
    assert record["rank"] == 8 and record["depth"] == 1.0
    assert record["input"].endswith("pbmc_small.h5ad")
    for figure in ("rank_curve", "forest"):
        with Image.open(results / f"plots/{figure}.png") as image:
            assert image.width >= 700 and image.height >= 250, figure
            # drawn, not blank: many distinct colours
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50, figure
