"""Tables that answer "which loss?": runs beside baselines, mean ± sd over seeds, paired tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .config import MCV_SUFFIX

KEYS = ["dataset", "kind", "model", "seed"]
#: Metrics in the Markdown summary, with the direction that is better.
HEADLINE_METRICS = {
    "cosine_mean": "higher",
    "centred_cosine_mean": "higher",
    "pearson_mean": "higher",
    "mse": "lower",
    "gene_pearson_median": "higher",
    "poisson_nll": "lower",
    "mcv_mse": "lower",
    "mcv_poisson_nll": "lower",
    "knn_accuracy": "higher",
    "leiden_ari": "higher",
    "label_silhouette": "higher",
}
#: Per-cell metrics compared between paired runs, and the direction that is better.
PAIRED_METRICS = {"cosine": "higher", "centred_cosine": "higher", "mse": "lower"}
REFERENCES = ("mse", "baseline_pca")


def merge_variants(tidy: pd.DataFrame) -> pd.DataFrame:
    """Fold a dataset's cross-validation variant into it: keep only its ``mcv_*`` metrics."""
    variant = tidy["dataset"].str.endswith(MCV_SUFFIX)
    keep = ~variant | tidy["metric"].str.startswith("mcv_")
    merged = tidy[keep].copy()
    merged["dataset"] = merged["dataset"].str.removesuffix(MCV_SUFFIX)
    return merged.reset_index(drop=True)


def wide_summary(tidy: pd.DataFrame) -> pd.DataFrame:
    """Pivot tidy (dataset, kind, model, seed, metric, value) rows to one row per run.

    Baselines (seed missing) come last; the headline metrics lead the columns.
    """
    # Baselines have no seed; a placeholder keeps them through the pivot's groupby.
    rows = tidy.assign(seed=tidy["seed"].fillna(-1).astype(int))
    wide = rows.pivot_table(index=KEYS, columns="metric", values="value", aggfunc="first")
    wide = wide.reset_index()
    wide.columns.name = None
    wide["seed"] = wide["seed"].astype("Int64").mask(wide["seed"] < 0)
    leading = [m for m in HEADLINE_METRICS if m in wide]
    others = sorted(c for c in wide.columns if c not in KEYS and c not in leading)
    wide["_order"] = (wide["kind"] == "baseline").astype(int)
    wide = wide.sort_values(["dataset", "_order", "model", "seed"]).drop(columns="_order")
    return wide[KEYS + leading + others].reset_index(drop=True)


def aggregate(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample sd and number of seeds per (dataset, kind, model, metric)."""
    grouped = tidy.groupby(["dataset", "kind", "model", "metric"], sort=False)["value"]
    return grouped.agg(mean="mean", sd="std", n="count").reset_index()


def paired_differences(
    per_cell: dict[tuple[str, int | None], pd.DataFrame],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Each model minus each reference on the same test cells, with bootstrap intervals.

    ``per_cell`` maps (model, seed) — seed None for baselines — to its per-cell table. For an
    autoencoder reference (``mse``) differences are paired by seed (same split, same initial
    weights) and then averaged over seeds per cell; a baseline is compared with every seed.
    The interval resamples test cells (percentile bootstrap of the mean difference).
    """
    rng = np.random.default_rng(seed)
    models = sorted({model for model, _ in per_cell if not model.startswith("baseline_")})
    rows = []
    for reference in REFERENCES:
        for model in models:
            if model == reference:
                continue
            pairs = []
            for run_seed in sorted(s for m, s in per_cell if m == model):
                reference_seed = None if reference.startswith("baseline_") else run_seed
                if (reference, reference_seed) in per_cell:
                    pairs.append((per_cell[(model, run_seed)],
                                  per_cell[(reference, reference_seed)]))
            if not pairs:
                continue
            for metric, better in PAIRED_METRICS.items():
                diffs = np.mean(
                    [a[metric].to_numpy() - b[metric].to_numpy() for a, b in pairs], axis=0
                )
                boot = rng.choice(diffs, size=(n_boot, len(diffs))).mean(axis=1)
                low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
                rows.append({
                    "model": model, "reference": reference, "metric": metric,
                    "better": better, "mean_difference": diffs.mean(),
                    "ci_low": low, "ci_high": high, "n_seeds": len(pairs),
                    "n_cells": len(diffs),
                })
    return pd.DataFrame(rows)


def _verdict(row: pd.Series) -> str:
    if row["ci_low"] > 0:
        return "better" if row["better"] == "higher" else "worse"
    if row["ci_high"] < 0:
        return "worse" if row["better"] == "higher" else "better"
    return "no clear difference"


def markdown_summary(tidy: pd.DataFrame, comparisons: pd.DataFrame, dataset: str) -> str:
    """Mean ± sd per model and headline metric (best in bold), then the paired comparisons."""
    stats = aggregate(tidy)
    stats = stats[stats["dataset"] == dataset]
    metrics = [m for m in HEADLINE_METRICS if m in set(stats["metric"])]
    order = stats.drop_duplicates("model").sort_values(["kind", "model"])["model"].tolist()
    means = stats.pivot(index="model", columns="metric", values="mean")
    sds = stats.pivot(index="model", columns="metric", values="sd")
    lines = [f"# {dataset}: which loss reconstructs held-out cells best?", ""]
    n_seeds = int(stats.loc[stats["kind"] == "autoencoder", "n"].max())
    lines.append(
        f"Mean ± sd over {n_seeds} training seeds on held-out test cells (baselines are "
        "deterministic). **Bold**: best value per column, baselines included. Higher is "
        "better except for mse and the negative log-likelihoods (nll)."
    )
    lines.append("")
    lines.append("| model | " + " | ".join(metrics) + " |")
    lines.append("|---|" + "---|" * len(metrics))
    best = {
        m: (means[m].max() if HEADLINE_METRICS[m] == "higher" else means[m].min())
        for m in metrics
    }
    for model in order:
        cells = []
        for m in metrics:
            mean = means.at[model, m]
            if pd.isna(mean):
                cells.append("–")
                continue
            sd = sds.at[model, m]
            text = f"{mean:.4g}" + (f" ± {sd:.2g}" if pd.notna(sd) else "")
            cells.append(f"**{text}**" if np.isclose(mean, best[m]) else text)
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if not comparisons.empty:
        lines += ["", "## Paired comparisons (per-cell, 95 % bootstrap interval over test cells)",
                  "", "| model | vs | metric | mean difference | 95 % CI | verdict |",
                  "|---|---|---|---|---|---|"]
        for _, row in comparisons.iterrows():
            lines.append(
                f"| {row['model']} | {row['reference']} | {row['metric']} | "
                f"{row['mean_difference']:+.4f} | [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] "
                f"| {_verdict(row)} |"
            )
    lines += ["", _answer(stats)]
    return "\n".join(lines) + "\n"


def _answer(stats: pd.DataFrame) -> str:
    """One sentence: the best loss by mean cosine, and whether it beats PCA at the same rank."""
    cosine = stats[stats["metric"] == "cosine_mean"].set_index("model")["mean"]
    autoencoders = stats.loc[stats["kind"] == "autoencoder", "model"].unique()
    best = cosine[autoencoders].idxmax()
    text = f"**Answer:** by mean test-cell cosine the best loss is `{best}` ({cosine[best]:.3f})"
    if "baseline_pca" in cosine:
        pca = cosine["baseline_pca"]
        relation = "beats" if cosine[best] > pca else "does not beat"
        text += f"; it {relation} PCA at the same rank ({pca:.3f})"
    if "baseline_mean" in cosine:
        text += f"; the training-mean profile alone scores {cosine['baseline_mean']:.3f}"
    return text + "."
