"""The registry of compared models answers what the rules, tables and figures ask of a model."""

from pathlib import Path

import pytest

from scae.evaluation.baselines import BASELINE_FITS, baseline_model
from scae.layout import parse
from scae.module.losses import LOSSES
from scae.registry import BASELINES, baselines_in, compared, kind_of, needs_clusters, needs_counts

REPO = Path(__file__).resolve().parents[1]


def test_every_baseline_has_a_fit_and_every_env_a_file():
    assert list(BASELINE_FITS) == list(BASELINES)
    for model in [*BASELINES.values(), *(compared(loss) for loss in LOSSES)]:
        assert (REPO / "envs" / f"{model.env}.yaml").exists(), model


def test_what_a_model_is_comes_from_the_registry():
    assert kind_of("baseline_pca") == "baseline" and kind_of("nb") == "autoencoder"
    pca, mean = compared("baseline_pca"), compared("baseline_mean")
    assert pca.ranked and not mean.ranked and not pca.seeded
    assert not compared("baseline_pca_mcv_rank").ranked  # MCV picks its rank: shared scope
    assert compared("nb").trained_on == "counts" and compared("mse").trained_on == "expression"
    assert compared("mse").seeded and compared("mse").ranked
    assert [m.short_name for m in baselines_in("dataset")] == ["mean", "pca", "library_size"]
    assert {m.short_name for m in baselines_in("mcv")} == set(BASELINES)
    # the files of a baseline are named by its short name, its tables by its name
    assert parse("results/d/k8/embeddings/baseline/pca.h5ad").label == "baseline_pca"
    assert parse("results/d/shared/metrics/baseline/mean.tsv").label == "baseline_mean"


def test_loss_needs_are_declared_once():
    assert needs_counts(["mse", "zinb"]) and not needs_counts(["mse", "cosine"])
    cluster = {"cosine_embedding": {"negative_sampling": "cluster"}}
    assert needs_clusters(["cosine_embedding"], cluster)
    assert not needs_clusters(["cosine_embedding"], {"cosine_embedding": {}})
    assert not needs_clusters(["mse"], cluster)


def test_an_unknown_baseline_names_the_known_ones():
    with pytest.raises(ValueError, match="baselines are: mean, pca, library_size"):
        baseline_model("pcaa", None, 4, 0, 10)


def test_the_forest_plot_places_the_best_loss_against_baselines_and_peers(monkeypatch):
    """A peer row (best − scvi) is no "loss − best" row: the best loss is still found."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from scae.evaluation import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    rows = [("mse", "scvi"), ("cosine", "mse"), ("mse", "baseline_pca")]
    comparisons = pd.DataFrame(
        {
            "rank": 8,
            "family": "answer",
            "model": [m for m, _ in rows],
            "reference": [r for _, r in rows],
            "metric": "centred_cosine",
            "mean_difference": [0.05, -0.2, -0.01],
            "ci_low": [0.03, -0.25, -0.02],
            "ci_high": [0.07, -0.15, 0.0],
            "verdict": ["better", "worse", "no difference"],
        }
    )
    plots.forest(comparisons, "unused.png")
    ax = figures[0].axes[0]
    assert ax.get_title() == "k = 8 (best: mse)"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["cosine − best", "mse − scvi", "mse − pca"]
    plt.close("all")
