"""Aggregation over seeds, paired comparisons and the Markdown summary."""

import numpy as np
import pandas as pd
import pytest

from scae.summary import (
    aggregate,
    markdown_summary,
    merge_variants,
    paired_differences,
    wide_summary,
)


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


def _tidy():
    rows = []
    for seed, (mse_cos, cos_cos) in enumerate([(0.80, 0.70), (0.82, 0.72)]):
        rows += [("d", "autoencoder", "mse", seed, "cosine_mean", mse_cos),
                 ("d", "autoencoder", "cosine", seed, "cosine_mean", cos_cos),
                 ("d", "autoencoder", "mse", seed, "mse", 0.2),
                 ("d", "autoencoder", "cosine", seed, "mse", 0.3)]
    rows += [("d", "baseline", "baseline_pca", np.nan, "cosine_mean", 0.85),
             ("d", "baseline", "baseline_pca", np.nan, "mse", 0.1),
             ("d", "baseline", "baseline_mean", np.nan, "cosine_mean", 0.6),
             ("d.mcv", "autoencoder", "mse", 0, "mcv_mse", 0.4),
             ("d.mcv", "autoencoder", "mse", 0, "cosine_mean", 0.1)]
    return pd.DataFrame(rows, columns=["dataset", "kind", "model", "seed", "metric", "value"])


def test_merge_variants_keeps_only_mcv_metrics():
    merged = merge_variants(_tidy())
    assert set(merged["dataset"]) == {"d"}
    mcv = merged[merged["metric"] == "mcv_mse"]
    assert len(mcv) == 1 and mcv["value"].iloc[0] == 0.4
    assert len(merged[merged["metric"] == "cosine_mean"]) == 6  # the variant's cosine dropped


def test_aggregate_mean_and_sd_over_seeds():
    stats = aggregate(merge_variants(_tidy())).set_index(["model", "metric"])
    assert stats.loc[("mse", "cosine_mean"), "mean"] == pytest.approx(0.81)
    assert stats.loc[("mse", "cosine_mean"), "sd"] == pytest.approx(np.std([0.8, 0.82], ddof=1))
    assert stats.loc[("mse", "cosine_mean"), "n"] == 2


def test_paired_differences_pair_by_seed_and_bootstrap():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.9, size=300)
    per_cell = {}
    for seed in (0, 1):
        per_cell[("mse", seed)] = pd.DataFrame(
            {"cosine": base, "centred_cosine": base, "mse": 1 - base})
        per_cell[("cosine", seed)] = pd.DataFrame(
            {"cosine": base + 0.05, "centred_cosine": base, "mse": 1 - base})
    per_cell[("baseline_pca", None)] = pd.DataFrame(
        {"cosine": base + 0.1 + rng.normal(0, 0.01, 300), "centred_cosine": base,
         "mse": 1 - base})
    table = paired_differences(per_cell).set_index(["model", "reference", "metric"])
    row = table.loc[("cosine", "mse", "cosine")]
    assert row["mean_difference"] == pytest.approx(0.05)
    assert row["ci_low"] == pytest.approx(0.05) and row["n_seeds"] == 2
    row = table.loc[("mse", "baseline_pca", "cosine")]
    assert row["ci_high"] < 0 and row["n_cells"] == 300
    assert table.loc[("cosine", "mse", "centred_cosine"), "mean_difference"] == 0


def test_markdown_marks_best_and_answers():
    tidy = merge_variants(_tidy())
    text = markdown_summary(tidy, pd.DataFrame(), "d")
    assert "| baseline_pca | **0.85** | **0.1** |" in text
    assert "| mse | 0.81 ± 0.014 |" in text
    assert "best loss is `mse` (0.810); it does not beat PCA at the same rank (0.850)" in text
