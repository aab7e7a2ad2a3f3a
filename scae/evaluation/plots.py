"""Figures of a dataset's comparison: distributions, training curves, embeddings, heatmap."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # rule jobs have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..registry import compared, kind_of
from .metrics import TUNING_CRITERIA
from .summary import HEADLINE_METRICS, aggregate


def _save(fig: plt.Figure, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cosine_distributions(per_cell: dict[str, pd.DataFrame], path) -> None:
    """Box plots of per-test-cell cosine per model (seeds pooled), baselines in grey."""
    names = sorted(per_cell, key=lambda m: (kind_of(m) == "baseline", m))
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(names), 4.2))
    boxes = ax.boxplot([per_cell[n]["cosine"] for n in names], showfliers=False, patch_artist=True)
    for patch, name in zip(boxes["boxes"], names):
        patch.set_facecolor("0.8" if kind_of(name) == "baseline" else "tab:blue")
    ax.set_xticks(range(1, len(names) + 1), names, rotation=45, ha="right")
    ax.set_ylabel("cosine(x̂, x) per test cell")
    if "baseline_mean" in per_cell:
        ax.axhline(
            np.median(per_cell["baseline_mean"]["cosine"]),
            color="0.4",
            ls="--",
            lw=1,
            label="median of training-mean profile",
        )
        ax.legend(loc="lower left", fontsize=8)
    _save(fig, path)


#: Panels per row of a multi-panel figure. The report shows a figure about 1,000 px wide in a
#: 1,400 px browser window (seen in headless Chromium): 4 panels a row left each ~230 px,
#: 3 leave each ~330 px.
PANELS_PER_ROW = 3


def _panel_grid(n_panels: int, width: float, height: float):
    """Return (figure, the first ``n_panels`` axes) on rows of at most :data:`PANELS_PER_ROW`.

    The unused axes of the last row are switched off.
    """
    n_cols = min(PANELS_PER_ROW, n_panels)
    n_rows = int(np.ceil(n_panels / n_cols))
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False
    )
    for ax in axes.flat[n_panels:]:
        ax.axis("off")
    return fig, list(axes.flat[:n_panels])


def training_curves(histories: dict[tuple[str, int], pd.DataFrame], path) -> None:
    """Plot validation cosine (comparable across losses) and each loss's own train/val curves."""
    losses = sorted({loss for loss, _ in histories})
    fig, axes = _panel_grid(1 + len(losses), 3.6, 3.0)
    colors = dict(zip(losses, plt.cm.tab10.colors))
    first_seed = {loss: min(s for name, s in histories if name == loss) for loss in losses}
    for (loss, seed), history in sorted(histories.items()):
        axes[0].plot(
            history["epoch"],
            history["val_cosine"],
            color=colors[loss],
            lw=1,
            label=loss if seed == first_seed[loss] else None,
        )
        ax = axes[1 + losses.index(loss)]
        ax.plot(history["epoch"], history["train_loss"], color=colors[loss], lw=1, alpha=0.5)
        ax.plot(history["epoch"], history["val_loss"], color=colors[loss], lw=1.5)
        ax.set_title(loss)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (faint: train, solid: val)", fontsize=8)
    axes[0].set_title("validation cosine")
    axes[0].set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    _save(fig, path)


def embeddings_umap(
    embeddings: dict[str, np.ndarray], labels: pd.Series | None, path, seed: int = 0
) -> None:
    """UMAP of each embedding (one panel per model), coloured by label when there is one."""
    import anndata as ad
    import scanpy as sc

    names = sorted(embeddings, key=lambda m: (kind_of(m) == "baseline", m))
    n_cols = min(3, len(names))
    n_rows = int(np.ceil(len(names) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4 * n_cols, 3.8 * n_rows), squeeze=False)
    categories = pd.Categorical(labels) if labels is not None else None
    palette = plt.cm.tab20.colors
    for ax, name in zip(axes.flat, names):
        graph = ad.AnnData(obsm={"X_emb": np.asarray(embeddings[name], dtype=np.float32)})
        sc.pp.neighbors(graph, use_rep="X_emb", random_state=seed)
        sc.tl.umap(graph, random_state=seed)
        xy = graph.obsm["X_umap"]
        codes = categories.codes if categories is not None else np.zeros(len(xy), dtype=int)
        ax.scatter(
            xy[:, 0], xy[:, 1], c=[palette[c % len(palette)] for c in codes], s=2, linewidths=0
        )
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    if categories is not None:
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=palette[i % len(palette)])
            for i in range(len(categories.categories))
        ]
        fig.legend(handles, categories.categories, loc="center right", fontsize=7)
        fig.subplots_adjust(right=0.82)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def metric_heatmap(tidy: pd.DataFrame, path) -> None:
    """Models × headline metrics, coloured by rank within each metric (1 = best)."""
    stats = aggregate(tidy)
    means = stats.pivot_table(index="model", columns="metric", values="mean")
    metrics = [m for m in HEADLINE_METRICS if m in means]
    means = means[metrics]
    ranks = pd.DataFrame(
        {m: means[m].rank(ascending=HEADLINE_METRICS[m] == "lower") for m in metrics}
    )
    fig, ax = plt.subplots(figsize=(1.1 * len(metrics) + 2.5, 0.45 * len(means) + 1.8))
    ax.imshow(ranks.to_numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(metrics)), metrics, rotation=45, ha="right")
    ax.set_yticks(range(len(means)), means.index)
    for i in range(len(means)):
        for j, metric in enumerate(metrics):
            value = means.iloc[i, j]
            if pd.notna(value):
                ax.text(
                    j,
                    i,
                    f"{value:.3g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if ranks.iloc[i, j] <= len(means) / 2 else "black",
                )
    ax.set_title("mean over seeds (colour: rank per metric, dark = best)")
    _save(fig, path)


def tuning_trials(trials: dict[str, pd.DataFrame], criterion: str, path) -> None:
    """Plot the validation score of every tuning trial, one panel per loss.

    Own-loss scores are on each loss's own scale. Markers: filled = complete, hollow = pruned, star
    = the chosen trial.
    """
    losses = sorted(trials)
    fig, axes = _panel_grid(len(losses), 3.6, 3.0)
    for ax, loss in zip(axes, losses):
        frame = trials[loss]
        complete = frame[frame["state"] == "complete"]
        pruned = frame[frame["state"] == "pruned"]
        ax.plot(complete["trial"], complete["score"], "o", color="tab:blue", ms=5)
        ax.plot(pruned["trial"], pruned["score"], "o", mfc="none", color="tab:blue", ms=5)
        if len(complete):
            best = complete.loc[
                complete["score"].idxmax()
                if TUNING_CRITERIA[criterion][1]
                else complete["score"].idxmin()
            ]
            ax.plot(best["trial"], best["score"], "*", color="tab:red", ms=12)
        ax.set_title(loss, fontsize=9)
        ax.set_xlabel("trial")
        ax.set_ylabel(f"validation {criterion}", fontsize=8)
    _save(fig, path)


#: How the rank curve marks each rank's verdict (best loss − PCA at that rank).
VERDICT_MARKS = {
    "better": ("▲", "autoencoder better"),
    "worse": ("▼", "PCA better"),
    "no difference": ("○", "no difference"),
}


def _seed_band(values: pd.Series, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the t-interval over seeds (mean, low, high); no width with one seed."""
    from scipy import stats

    mean, n = float(values.mean()), int(values.count())
    if n < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.5 + level / 2, n - 1) * float(values.std()) / np.sqrt(n)
    return mean, mean - half, mean + half


def rank_curve(tidy: pd.DataFrame, ranks: pd.DataFrame, primary_metric: str, path) -> None:
    """Plot ``primary_metric`` on test cells against the latent rank k (log2 axis).

    The plot has one line per loss with its 95 % seed interval, PCA at each k, each peer's mean
    over seeds at each k, the mean profile (k = 0) as a level, the training-cell scores faint and
    dashed, and each rank's verdict (best − PCA-k) marked.
    """
    from .metrics import TRAIN_PREFIX

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _loss_curves(ax, tidy[tidy["kind"] == "autoencoder"], primary_metric)
    for metric, style in (
        (primary_metric, dict(lw=2.2, ls="-", alpha=1.0, label="PCA at k")),
        (TRAIN_PREFIX + primary_metric, dict(lw=1.0, ls="--", alpha=0.4)),
    ):
        pca = tidy[(tidy["model"] == "baseline_pca") & (tidy["metric"] == metric)]
        pca = pca.sort_values("rank")
        if len(pca):
            ax.plot(pca["rank"], pca["value"], "s", color="black", ms=4, **style)
    peers = tidy[(tidy["kind"] == "peer") & (tidy["metric"] == primary_metric)]
    for peer, marker in zip(sorted(peers["model"].unique()), "D^v"):
        means = peers[peers["model"] == peer].groupby("rank")["value"].mean()
        label = f"{compared(peer).label} at k (peer)"
        ax.plot(means.index, means.to_numpy(), marker + "-", color="0.25", ms=4, lw=1, label=label)
    mean = tidy[(tidy["model"] == "baseline_mean") & (tidy["metric"] == primary_metric)]
    if len(mean):
        ax.axhline(
            float(mean["value"].iloc[0]),
            color="0.5",
            ls=":",
            lw=1.2,
            label="training-mean profile (k = 0)",
        )
    ax.set_xscale("log", base=2)
    ks = ranks["rank"].tolist()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    top = ax.get_ylim()[1]
    for row in ranks.itertuples():  # the verdicts above the axes
        if row.verdict in VERDICT_MARKS:
            mark = VERDICT_MARKS[row.verdict][0]
            ax.annotate(
                mark, (row.rank, top), ha="center", va="bottom", fontsize=12, annotation_clip=False
            )
    ax.set_xlabel("latent rank k (log2)")
    ax.set_ylabel(f"{primary_metric} (test cells; dashed: training cells)")
    marks = ", ".join(f"{mark} {text}" for mark, text in VERDICT_MARKS.values())
    ax.set_title(f"best loss vs PCA at each k: {marks}", fontsize=9, pad=18)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    _save(fig, path)


def _loss_curves(ax, autoencoders: pd.DataFrame, primary_metric: str) -> None:
    """Plot each loss's mean score against rank with its seed band.

    Its training-cell scores are faint and dashed.
    """
    from .metrics import TRAIN_PREFIX

    losses = sorted(autoencoders["model"].unique())
    colors = dict(zip(losses, plt.cm.tab10.colors))
    for loss in losses:
        for metric, faint in ((primary_metric, False), (TRAIN_PREFIX + primary_metric, True)):
            rows = autoencoders[
                (autoencoders["model"] == loss) & (autoencoders["metric"] == metric)
            ]
            if rows.empty:
                continue
            band = np.array([_seed_band(g["value"]) for _, g in rows.groupby("rank")])
            ks = sorted(rows["rank"].unique())
            if faint:
                ax.plot(ks, band[:, 0], color=colors[loss], lw=0.8, ls="--", alpha=0.35)
                continue
            ax.plot(ks, band[:, 0], "o-", color=colors[loss], lw=1.4, ms=3, label=loss)
            ax.fill_between(ks, band[:, 1], band[:, 2], color=colors[loss], alpha=0.15, lw=0)


def forest(comparisons: pd.DataFrame, path, columns: int = 3) -> None:
    """Plot the answer table at each rank as a forest plot.

    The plot shows every loss minus the best loss, and the best minus PCA, the mean profile
    and each peer, with their simultaneous intervals; 0 dashed. One panel per rank, ``columns``
    a row.
    """
    answer = comparisons[comparisons["family"] == "answer"]
    ranks = sorted(answer["rank"].unique())
    n_rows = max(1, int(np.ceil(len(ranks) / columns)))
    n_cols = min(columns, max(1, len(ranks)))
    height = 0.32 * max((answer["rank"] == r).sum() for r in ranks) + 1.4 if ranks else 2
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.6 * n_cols, height * n_rows), squeeze=False)
    for ax, rank in zip(axes.flat, ranks):
        rows = answer[answer["rank"] == rank]
        # a loss against the best loss, or the best against a baseline or a peer
        versus_loss = rows["reference"].map(kind_of) == "autoencoder"
        versus_best = rows[versus_loss]
        best = versus_best["reference"].iloc[0] if len(versus_best) else rows["model"].iloc[0]
        rows = pd.concat([versus_best.sort_values("mean_difference"), rows[~versus_loss]])
        labels = [
            f"{r.model} − best"
            if kind_of(r.reference) == "autoencoder"
            else f"{r.model} − {compared(r.reference).short_name}"
            for r in rows.itertuples()
        ]
        y = np.arange(len(rows))[::-1]
        colors = [
            "tab:green" if v == "better" else "tab:red" if v == "worse" else "0.4"
            for v in rows["verdict"]
        ]
        for row, height, color in zip(rows.itertuples(), y, colors):
            ax.plot([row.ci_low, row.ci_high], [height, height], color=color, lw=1.6)
            ax.plot(row.mean_difference, height, "o", color=color, ms=4)
        ax.axvline(0, color="0.3", ls="--", lw=1)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_title(f"k = {rank} (best: {best})", fontsize=9)
        ax.set_xlabel(f"difference in {rows['metric'].iloc[0]}", fontsize=8)
    for ax in axes.flat[len(ranks) :]:
        ax.axis("off")
    _save(fig, path)
