"""Tables that answer "which loss?" and "at which rank does an autoencoder beat PCA?": runs
beside baselines, mean ± sd over seeds, paired differences with intervals over seeds and cells,
the one-line answer at each latent rank, and the rank table with its crossing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .config import MCV_SUFFIX
from .layout import parse
from .metrics import EMBEDDING_DIM, METRICS, PER_CELL_SUMMARY, TRAIN_PREFIX
from .outputs import SETTING_PREFIX
from .stats import bonferroni, crossed_mean_difference

#: What identifies a run in the tidy tables; ``rank`` (the latent rank) and ``seed`` are
#: missing for the baselines that have none (the mean profile, library size, MCV's).
KEYS = ["dataset", "kind", "model", "rank", "seed"]
#: Metrics in the Markdown summary, with the direction that is better (views of
#: :data:`scae.metrics.METRICS`, the one registry).
HEADLINE_METRICS = {name: m.better for name, m in METRICS.items() if m.headline}
#: Metrics the answer can rank by (``summary.primary_metric``): each is the mean over test
#: cells of a per-cell score, so its paired differences have intervals.
PER_CELL_OF = {metric: score for score, metric in PER_CELL_SUMMARY.items()}
#: Per-cell scores and the direction that is better.
PER_CELL_BETTER = {m.per_cell: m.better for m in METRICS.values() if m.per_cell}
#: Per-cell scores compared in the "paired" family, each loss against each of REFERENCES.
PAIRED_METRICS = ("cosine", "centred_cosine", "mse")
REFERENCES = ("mse", "baseline_pca")
#: Models that could denoise; the mean profile beating all of them on an MCV metric means the
#: metric cannot tell denoisers apart at this depth.
DENOISING_BASELINES = ("baseline_pca", "baseline_pca_mcv_rank")
#: Columns of comparisons.tsv (:func:`paired_differences`).
COMPARISON_COLUMNS = ["rank", "family", "model", "reference", "metric", "better", "n_seeds",
                      "n_cells", "mean_difference", "ci_low", "ci_high", "p_value", "p_adjusted",
                      "verdict"]
#: Columns of ranks.tsv (:func:`rank_table`).
RANK_COLUMNS = ["rank", "best", "metric", "best_mean", "best_train", "pca_mean", "pca_train",
                "mean_difference", "ci_low", "ci_high", "verdict"]
#: Prefix of the machine-readable answer comment that :mod:`scae.findings` reads.
ANSWER_TAG = "scae-answer:"


def merge_variants(tidy: pd.DataFrame) -> pd.DataFrame:
    """Fold a dataset's cross-validation variant into it: keep only its ``mcv_*`` metrics and
    the embedding width of runs the main dataset lacks (the rank ``baseline_pca_mcv_rank``
    chose; every other run has the same width in both variants)."""
    variant = tidy["dataset"].str.endswith(MCV_SUFFIX)
    keep = ~variant | tidy["metric"].str.startswith("mcv_") | (tidy["metric"] == EMBEDDING_DIM)
    merged = tidy[keep].assign(dataset=tidy["dataset"].str.removesuffix(MCV_SUFFIX),
                               _variant=variant[keep])
    # Where both variants have a value (the embedding width of the same model), the main's.
    merged = merged.sort_values("_variant", kind="stable")
    merged = merged.drop_duplicates(subset=[*KEYS, "metric"], keep="first").sort_index()
    return merged.drop(columns="_variant").reset_index(drop=True)


def wide_summary(tidy: pd.DataFrame, convergence: pd.DataFrame | None = None) -> pd.DataFrame:
    """Pivot tidy (dataset, kind, model, seed, metric, value) rows to one row per run.

    Baselines (seed missing) come last; the headline metrics lead the columns. With
    ``convergence`` (:func:`convergence`), each autoencoder run of the main dataset also gets
    its ``epochs``, ``best_epoch`` and ``converged``.
    """
    # Baselines have no seed (and some no rank); a placeholder keeps them through the pivot.
    rows = tidy.assign(seed=tidy["seed"].fillna(-1).astype(int),
                       rank=tidy["rank"].fillna(-1).astype(int))
    wide = rows.pivot_table(index=KEYS, columns="metric", values="value", aggfunc="first")
    wide = wide.reset_index()
    wide.columns.name = None
    leading = [m for m in HEADLINE_METRICS if m in wide]
    others = sorted(c for c in wide.columns if c not in KEYS and c not in leading)
    training = []
    if convergence is not None:
        training = ["epochs", "best_epoch", "converged"]
        wide = wide.merge(convergence[["dataset", "model", "rank", "seed", *training]],
                          on=["dataset", "model", "rank", "seed"], how="left")
        wide[["epochs", "best_epoch"]] = wide[["epochs", "best_epoch"]].astype("Int64")
        wide["converged"] = wide["converged"].astype("boolean")
    wide["seed"] = wide["seed"].astype("Int64").mask(wide["seed"] < 0)
    wide["_order"] = (wide["kind"] == "baseline").astype(int)
    wide["_rank"] = wide["rank"].where(wide["rank"] >= 0, np.iinfo(np.int64).max)
    wide = wide.sort_values(["dataset", "_rank", "_order", "model", "seed"])
    wide = wide.drop(columns=["_order", "_rank"])
    wide["rank"] = wide["rank"].astype("Int64").mask(wide["rank"] < 0)
    return wide[KEYS + leading + others + training].reset_index(drop=True)


def aggregate(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample sd and number of seeds per (dataset, kind, model, rank, metric)."""
    grouped = tidy.groupby(["dataset", "kind", "model", "rank", "metric"], sort=False,
                           dropna=False)["value"]
    return grouped.agg(mean="mean", sd="std", n="count").reset_index()


def read_histories(paths) -> dict[tuple[str, int, str, int], pd.DataFrame]:
    """(dataset, rank, loss, seed) → history of every
    ``results/{dataset}/k{rank}/models/{loss}/seed{seed}/history.tsv`` in ``paths``."""
    histories = {}
    for path in paths:
        run = parse(path)
        histories[(run.dataset, run.rank, run.model, run.seed)] = pd.read_csv(path, sep="\t")
    return histories


def convergence(
    histories: dict[tuple[str, int, str, int], pd.DataFrame], max_epochs: int, patience: int
) -> pd.DataFrame:
    """Per (dataset, rank, loss, seed) training history: ``epochs`` run, ``best_epoch`` (first
    minimum of ``val_loss``, the weights kept) and ``converged``.

    A run is *not converged* when it ran all ``max_epochs`` and its best epoch lies within the
    last ``patience`` of them (best_epoch > max_epochs − patience): early stopping never fired,
    the validation loss was still improving, and more epochs might have changed its scores.
    """
    rows = []
    for (dataset, rank, loss, seed), history in sorted(histories.items()):
        epochs = int(history["epoch"].max())
        best = int(history.loc[history["val_loss"].idxmin(), "epoch"])
        rows.append({"dataset": dataset, "rank": rank, "model": loss, "seed": seed,
                     "epochs": epochs, "best_epoch": best,
                     "converged": not (epochs >= max_epochs and best > max_epochs - patience)})
    return pd.DataFrame(rows, columns=["dataset", "rank", "model", "seed", "epochs",
                                       "best_epoch", "converged"])


def at_rank(frame: pd.DataFrame, rank: int) -> pd.DataFrame:
    """The rows of runs at latent ``rank`` and of the runs without a rank (the baselines every
    rank is compared with)."""
    return frame[(frame["rank"] == rank) | frame["rank"].isna()]


def ranks_in(frame: pd.DataFrame) -> list[int]:
    """The latent ranks of a tidy or aggregated table, ascending."""
    return sorted(int(r) for r in frame["rank"].dropna().unique())


def direction(metric: str) -> str:
    """'higher' or 'lower': which values of a headline or per-cell metric are better."""
    return HEADLINE_METRICS.get(metric) or PER_CELL_BETTER[metric]


def best_loss(stats: pd.DataFrame, primary_metric: str) -> str:
    """The loss with the best mean over seeds of ``primary_metric`` (stats of :func:`aggregate`)."""
    rows = stats[(stats["kind"] == "autoencoder") & (stats["metric"] == primary_metric)]
    if rows.empty:
        raise ValueError(f"summary.primary_metric {primary_metric!r} has no autoencoder values; "
                         f"choose one of {', '.join(PER_CELL_OF)}")
    means = rows.set_index("model")["mean"]
    return str(means.idxmax() if direction(primary_metric) == "higher" else means.idxmin())


def _run_name(key: tuple[str, int | None]) -> str:
    model, seed = key
    return model if seed is None else f"{model} seed {seed}"


def difference_table(
    per_cell: dict[tuple[str, int | None], pd.DataFrame], model: str, reference: str, metric: str
) -> np.ndarray | None:
    """Seeds × cells table of ``model`` − ``reference`` per-cell ``metric``, joined on ``cell``.

    A loss reference is paired by seed (same seed, same cells), a baseline (seed None) is
    compared with every seed of ``model``. None when no pair exists.
    """
    seeds = sorted(s for m, s in per_cell if m == model)
    if reference.startswith("baseline_"):
        pairs = [((model, s), (reference, None)) for s in seeds if (reference, None) in per_cell]
    else:
        pairs = [((model, s), (reference, s)) for s in seeds if (reference, s) in per_cell]
    if not pairs:
        return None
    first = pairs[0][0]
    cells = pd.Index(per_cell[first]["cell"])

    def aligned(key: tuple[str, int | None]) -> np.ndarray:
        table = per_cell[key]
        scores = pd.Series(table[metric].to_numpy(), index=pd.Index(table["cell"]))
        if not scores.index.is_unique or len(scores) != len(cells) or not cells.isin(
                scores.index).all():
            raise ValueError(
                f"per-cell scores of {_run_name(key)} cover other test cells than those of "
                f"{_run_name(first)} ({int((~cells.isin(scores.index)).sum())} missing, "
                f"{len(scores) - int(scores.index.isin(cells).sum())} extra, "
                f"{int(scores.index.duplicated().sum())} repeated); rerun both runs' evaluate "
                "jobs (snakemake --forcerun evaluate)"
            )
        return scores.reindex(cells).to_numpy(np.float64)

    return np.vstack([aligned(a) - aligned(b) for a, b in pairs])


def comparison_plan(losses: list[str], baselines: list[str], best: str, primary_metric: str
                    ) -> list[tuple[str, str, str, str]]:
    """(family, model, reference, per-cell metric) of every paired comparison.

    * ``answer``: every other loss against the best one, and the best against PCA and the
      mean profile, on the primary metric — the comparisons the answer line rests on;
    * ``paired``: every loss against ``mse`` and against PCA on :data:`PAIRED_METRICS` (and the
      primary metric's per-cell score).
    """
    primary = PER_CELL_OF[primary_metric]
    plan = [("answer", loss, best, primary) for loss in losses if loss != best]
    plan += [("answer", best, b, primary) for b in ("baseline_pca", "baseline_mean")
             if b in baselines]
    metrics = list(dict.fromkeys([*PAIRED_METRICS, primary]))
    plan += [("paired", loss, reference, metric)
             for reference in REFERENCES if reference in losses or reference in baselines
             for loss in losses if loss != reference for metric in metrics]
    return plan


def _verdict(low: float, high: float, better: str) -> str:
    if low > 0:
        return "better" if better == "higher" else "worse"
    if high < 0:
        return "worse" if better == "higher" else "better"
    return "no difference"


def paired_differences(
    per_cell: dict[tuple[str, int | None], pd.DataFrame],
    best: str,
    primary_metric: str = "centred_cosine_mean",
    level: float = 0.95,
    rank: int | None = None,
) -> pd.DataFrame:
    """Model − reference per-cell differences with simultaneous intervals per family, for
    the runs of one latent ``rank`` (recorded in the ``rank`` column).

    ``per_cell`` maps (model, seed) — seed None for baselines — to its per-cell table (a
    ``cell`` column and one column per score). Each comparison's seeds × cells table
    (:func:`difference_table`) gets the interval of :mod:`scae.stats`, which includes
    seed-to-seed and cell-to-cell variation; within a family of m comparisons
    (:func:`comparison_plan`) each interval has level 1 − (1 − ``level``)/m (Bonferroni), so
    all of a family's intervals hold together with probability ≥ ``level``, and
    ``p_adjusted`` = min(1, m·p). Verdict: better / worse when the interval excludes 0,
    ``no difference`` when it contains 0.
    """
    losses = sorted({m for m, _ in per_cell if not m.startswith("baseline_")})
    baselines = sorted({m for m, _ in per_cell if m.startswith("baseline_")})
    rows = []
    for family, model, reference, metric in comparison_plan(losses, baselines, best,
                                                            primary_metric):
        table = difference_table(per_cell, model, reference, metric)
        if table is not None:
            rows.append({"rank": rank, "family": family, "model": model,
                         "reference": reference, "metric": metric,
                         "better": PER_CELL_BETTER[metric],
                         "difference": crossed_mean_difference(table)})
    return with_intervals(rows, level)


def with_intervals(rows: list[dict], level: float) -> pd.DataFrame:
    """:data:`COMPARISON_COLUMNS` of comparisons given with their ``difference``
    (:class:`scae.stats.MeanDifference`): within each family of m rows, intervals at level
    1 − (1 − ``level``)/m and Bonferroni-adjusted p, and the verdict."""
    if not rows:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    frame = pd.DataFrame(rows)
    for family, members in frame.groupby("family", sort=False):
        m = len(members)
        p = np.array([d.p_value() for d in members["difference"]])
        frame.loc[members.index, "p_value"] = p
        frame.loc[members.index, "p_adjusted"] = bonferroni(p)
        bounds = [d.interval(1 - (1 - level) / m) for d in members["difference"]]
        frame.loc[members.index, "ci_low"] = [low for low, _ in bounds]
        frame.loc[members.index, "ci_high"] = [high for _, high in bounds]
    frame["mean_difference"] = [d.mean for d in frame["difference"]]
    frame["n_seeds"] = [d.n_seeds for d in frame["difference"]]
    frame["n_cells"] = [d.n_cells for d in frame["difference"]]
    frame["verdict"] = [_verdict(lo, hi, b) for lo, hi, b in
                        zip(frame["ci_low"], frame["ci_high"], frame["better"])]
    return frame[COMPARISON_COLUMNS]


def _seed_counts(stats: pd.DataFrame, metrics: list[str]) -> dict[str, int]:
    """How many training seeds each metric's autoencoder values rest on (the most any loss has)."""
    runs = stats[stats["kind"] == "autoencoder"]
    counts = runs.groupby("metric")["n"].max()
    return {m: int(counts.get(m, 0)) for m in metrics}


def _seed_sentence(seeds: dict[str, int]) -> str:
    groups: dict[int, list[str]] = {}
    for metric, n in seeds.items():
        if n:
            groups.setdefault(n, []).append(metric)
    if len(groups) == 1:
        (n, _), = groups.items()
        return f"Mean ± sd over {n} training seed{'s' * (n != 1)} on held-out test cells"
    parts = [f"{n} seed{'s' * (n != 1)} for {', '.join(ms)}" for n, ms in sorted(groups.items(),
                                                                                 reverse=True)]
    return ("Mean ± sd over training seeds on held-out test cells — " + "; ".join(parts)
            + " (columns marked “(n seed)” rest on fewer seeds than the others: a single seed "
            "has no sd and says nothing about seed-to-seed variation)")


def _notes(stats: pd.DataFrame) -> list[str]:
    """Caveats: MCV metrics the mean profile wins, and the rank MCV chose for PCA."""
    notes = []
    means = stats.pivot_table(index="model", columns="metric", values="mean")
    models = stats.loc[(stats["kind"] == "autoencoder")
                       | stats["model"].isin(DENOISING_BASELINES), "model"].unique()
    for metric in [m for m in means if m.startswith("mcv_")]:
        if "baseline_mean" not in means.index or pd.isna(means.at["baseline_mean", metric]):
            continue
        values = means.loc[[m for m in models if m in means.index], metric].dropna()
        mean_profile = means.at["baseline_mean", metric]
        if len(values) and (mean_profile < values).all():
            notes.append(
                f"`{metric}`: the training-mean profile, which cannot denoise, beats every model "
                f"({mean_profile:.4g} vs best {values.min():.4g}, `{values.idxmin()}`): at this "
                "sequencing depth the held-out molecules are too few for this metric to tell "
                "denoisers apart — do not rank losses by it."
            )
    if EMBEDDING_DIM in means and "baseline_pca_mcv_rank" in means.index:
        rank = means.at["baseline_pca_mcv_rank", EMBEDDING_DIM]
        pca = means[EMBEDDING_DIM].get("baseline_pca")
        if pd.notna(rank):
            notes.append(
                f"`baseline_pca_mcv_rank`: PCA at the rank k = {int(rank)} that minimises "
                "`mcv_mse` on validation cells (molecular cross-validation, Batson et al. "
                "2019)" + (f", beside `baseline_pca` at the latent dim k = {int(pca)}"
                           if pca is not None and pd.notna(pca) else "") + ".")
    return notes


def _unconverged(runs: pd.DataFrame) -> str:
    """'d: `mse` seeds 0, 1; `nb` seed 2; d.mcv: …' for the runs that did not converge."""
    bad = runs[~runs["converged"].astype(bool)]
    parts = []
    for dataset, in_dataset in bad.groupby("dataset", sort=True):
        losses = [f"`{loss}` seed{'s' * (len(group) > 1)} {', '.join(map(str, group['seed']))}"
                  for loss, group in in_dataset.groupby("model", sort=True)]
        parts.append(f"{dataset}: {'; '.join(losses)}")
    return "; ".join(parts)


def answer(
    stats: pd.DataFrame,
    comparisons: pd.DataFrame,
    dataset: str,
    primary_metric: str,
    runs: pd.DataFrame | None = None,
    level: float = 0.95,
) -> tuple[str, dict]:
    """The answer sentence and its record (best loss, tied losses) for :mod:`scae.findings`.

    The best loss has the best mean of ``primary_metric``; a loss is *tied* with it when their
    ``answer``-family interval contains 0. PCA and the mean profile are placed by the best
    loss's comparisons with them, and runs that did not converge are named.
    """
    best = best_loss(stats, primary_metric)
    means = stats[stats["metric"] == primary_metric].set_index("model")["mean"]
    n_seeds = int(stats.loc[(stats["metric"] == primary_metric) & (stats["model"] == best),
                            "n"].iloc[0])
    rule = "higher" if direction(primary_metric) == "higher" else "lower"
    text = (f"**Answer:** ranked by `{primary_metric}` ({rule} is better; mean over {n_seeds} "
            f"seed{'s' * (n_seeds != 1)} on test cells), the best loss is `{best}` "
            f"({means[best]:.4g})")
    if comparisons.empty:
        comparisons = pd.DataFrame(columns=COMPARISON_COLUMNS)
    rows = comparisons[comparisons["family"] == "answer"]
    tied = []
    if len(rows):
        against_best = rows[rows["reference"] == best]
        tied = sorted(against_best.loc[against_best["verdict"] == "no difference", "model"])
        confidence = f"{level:.0%} simultaneous intervals over seeds and test cells"
        if n_seeds == 1:
            confidence = f"{level:.0%} simultaneous intervals over test cells only (one seed)"
        if tied:
            text += ("; statistically tied with it (" + confidence + " contain 0): "
                     + ", ".join(f"`{t}` ({means[t]:.4g})" for t in tied))
        elif len(against_best):
            text += f"; every other loss is worse ({confidence})"
    for baseline, name in (("baseline_pca", "PCA at the same rank"),
                           ("baseline_mean", "the training-mean profile")):
        if baseline not in means:
            continue
        row = rows[(rows["model"] == best) & (rows["reference"] == baseline)]
        value = f"{means[baseline]:.4g}"
        if not len(row):
            text += f"; {name} scores {value}"
            continue
        relation = {"better": f"it beats {name} ({value})",
                    "worse": f"{name} ({value}) beats it",
                    "no difference": f"it ties with {name} ({value})"}[row["verdict"].iloc[0]]
        text += f"; {relation}"
    text += "."
    if runs is not None and not runs["converged"].all():
        text += (" Not converged (all max_epochs run, best epoch among the last `patience`: "
                 f"more epochs might change their scores): {_unconverged(runs)}.")
    record = {"dataset": dataset, "primary_metric": primary_metric, "best": best, "tied": tied}
    return text, record


def settings_table(stats: pd.DataFrame) -> list[str]:
    """Markdown lines: the settings each loss trained with (``setting_*`` metrics), and
    whether tuning chose them; no lines when no run recorded any."""
    settings = stats[stats["metric"].str.startswith(SETTING_PREFIX)]
    if settings.empty:
        return []
    table = settings.pivot(index="model", columns="metric", values="mean")
    hidden = sorted((c for c in table if c.startswith(f"{SETTING_PREFIX}hidden_")),
                    key=lambda c: int(c.rsplit("_", 1)[1]))
    lines = ["", "Settings each loss trained with (every seed alike; `tuned`: chosen on "
             "validation cells by the tune stage, see `tuning/{loss}/trials.tsv`):", "",
             "| loss | learning_rate | weight_decay | batch_size | dropout | hidden | tuned |",
             "|---|---|---|---|---|---|---|"]
    for model, row in table.iterrows():
        widths = ", ".join(f"{row[c]:.0f}" for c in hidden if pd.notna(row[c]))
        tuned = "yes" if row.get(f"{SETTING_PREFIX}tuned", 0) == 1 else "no"
        lines.append(
            f"| {model} | {row[SETTING_PREFIX + 'learning_rate']:.3g} | "
            f"{row[SETTING_PREFIX + 'weight_decay']:.3g} | "
            f"{row[SETTING_PREFIX + 'batch_size']:.0f} | {row[SETTING_PREFIX + 'dropout']:.3g}"
            f" | [{widths}] | {tuned} |")
    return lines


def _thin_sentence(source: dict | None) -> str:
    thin = (source or {}).get("thin")
    if not thin:
        return ""
    return (f"Molecules thinned binomially to a fraction {thin['fraction']:g} of the input's "
            f"(seed {thin.get('seed', 0)}) before QC. ")


def _preprocess_sentence(settings: dict) -> str:
    return (f"Preprocessed with QC min_genes = {settings['min_genes']}, max_pct_mito = "
            f"{settings['max_pct_mito']}, min_cells = {settings['min_cells']} (genes), "
            f"{settings['n_top_genes']} HVGs, target_sum = {settings['target_sum']:g}; split "
            f"test_fraction = {settings['test_fraction']}, val_fraction = "
            f"{settings['val_fraction']}, split_seed = {settings['split_seed']}.")


def rank_comparisons(
    per_cell: dict[int, dict[tuple[str, int | None], pd.DataFrame]],
    stats: pd.DataFrame,
    primary_metric: str = "centred_cosine_mean",
    level: float = 0.95,
) -> pd.DataFrame:
    """Every rank's :func:`paired_differences` (against that rank's best loss), then the
    ``rank`` family: at each rank, the best loss − PCA at that rank on the primary metric,
    with intervals simultaneous over the ranks (Bonferroni over their number).

    ``per_cell`` maps each rank to its runs' per-cell tables (the baselines without a rank
    included at every rank); ``stats`` is :func:`aggregate` of the tidy metrics.
    """
    frames, rank_rows = [], []
    metric = PER_CELL_OF[primary_metric]
    for rank, runs in sorted(per_cell.items()):
        best = best_loss(at_rank(stats, rank), primary_metric)
        frames.append(paired_differences(runs, best, primary_metric, level, rank))
        table = difference_table(runs, best, "baseline_pca", metric)
        if table is not None:
            rank_rows.append({"rank": rank, "family": "rank", "model": best,
                              "reference": "baseline_pca", "metric": metric,
                              "better": PER_CELL_BETTER[metric],
                              "difference": crossed_mean_difference(table)})
    frames.append(with_intervals(rank_rows, level))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def rank_table(stats: pd.DataFrame, comparisons: pd.DataFrame, primary_metric: str
               ) -> pd.DataFrame:
    """One row per latent rank (:data:`RANK_COLUMNS`): the best loss, its mean
    ``primary_metric`` on test cells and on training cells (``train_*``: the generalization
    gap), PCA's at that rank, and the ``rank``-family difference best − PCA with its
    interval and verdict (NaN / "" where PCA was not run)."""
    rows = []
    family = comparisons[comparisons["family"] == "rank"] if len(comparisons) else comparisons
    for rank in ranks_in(stats):
        here = at_rank(stats, rank)
        best = best_loss(here, primary_metric)

        def mean(model: str, metric: str) -> float:
            value = here.loc[(here["model"] == model) & (here["metric"] == metric), "mean"]
            return float(value.iloc[0]) if len(value) else np.nan

        row = {"rank": rank, "best": best, "metric": primary_metric,
               "best_mean": mean(best, primary_metric),
               "best_train": mean(best, TRAIN_PREFIX + primary_metric),
               "pca_mean": mean("baseline_pca", primary_metric),
               "pca_train": mean("baseline_pca", TRAIN_PREFIX + primary_metric),
               "mean_difference": np.nan, "ci_low": np.nan, "ci_high": np.nan, "verdict": ""}
        match = family[family["rank"] == rank] if len(family) else family
        if len(match):
            found = match.iloc[0]
            row |= {k: found[k] for k in ("mean_difference", "ci_low", "ci_high", "verdict")}
        rows.append(row)
    return pd.DataFrame(rows, columns=RANK_COLUMNS)


def crossing(table: pd.DataFrame) -> tuple[int | None, int | None]:
    """(the largest rank at which the best autoencoder is better than PCA at that rank, the
    smallest at which PCA is better), each None when there is no such rank."""
    better = table.loc[table["verdict"] == "better", "rank"]
    worse = table.loc[table["verdict"] == "worse", "rank"]
    return (int(better.max()) if len(better) else None,
            int(worse.min()) if len(worse) else None)


def crossing_sentence(table: pd.DataFrame) -> str:
    """The crossing in words (:func:`crossing`)."""
    largest, smallest = crossing(table)
    parts = [("the best autoencoder beats PCA at the same rank up to k = "
              f"{largest}" if largest is not None else
              "the best autoencoder beats PCA at no rank"),
             (f"PCA is better from k = {smallest}" if smallest is not None else
              "PCA is better at no rank")]
    ties = table.loc[table["verdict"] == "no difference", "rank"].tolist()
    text = "**Crossing:** " + "; ".join(parts)
    if ties:
        text += f"; tied at k = {', '.join(map(str, ties))}"
    if largest is not None and smallest is not None and smallest < largest:
        text += " (not one crossing: the verdicts change direction more than once)"
    return text + "."


def _rank_lines(table: pd.DataFrame, primary_metric: str, level: float) -> list[str]:
    """The rank table, its crossing and the two figures of :mod:`scae.plots`."""
    verdicts = {"better": "autoencoder better", "worse": "PCA better",
                "no difference": "no difference", "": "–"}
    lines = ["## At which rank does an autoencoder beat PCA?", "",
             f"Per latent rank k: the loss with the best mean `{primary_metric}` on test cells, "
             "the same metric on its training cells (the generalization gap), PCA at rank k, "
             "and best − PCA-k on the same test cells with an interval over seeds and cells, "
             f"simultaneous at {level:.0%} over the {len(table)} rank"
             f"{'s' * (len(table) != 1)}.", "",
             "| k | best loss | test | train | PCA-k test | PCA-k train | best − PCA-k | "
             f"simultaneous {level:.0%} CI | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]

    def number(value: float, fmt: str = ".4f") -> str:
        return "–" if pd.isna(value) else format(value, fmt)

    for row in table.itertuples():
        interval = ("–" if pd.isna(row.ci_low) else
                    f"[{row.ci_low:+.4f}, {row.ci_high:+.4f}]")
        lines.append(
            f"| {row.rank} | `{row.best}` | {number(row.best_mean)} | {number(row.best_train)} | "
            f"{number(row.pca_mean)} | {number(row.pca_train)} | "
            f"{number(row.mean_difference, '+.4f')} | {interval} | {verdicts[row.verdict]} |")
    lines += ["", crossing_sentence(table), "",
              "![rank curve](plots/rank_curve.png) ![answer](plots/forest.png)", ""]
    return lines


def _rank_section(
    stats: pd.DataFrame, comparisons: pd.DataFrame, dataset: str, primary_metric: str,
    runs: pd.DataFrame | None, level: float, rank: int, reference: bool,
    source: dict | None = None,
) -> list[str]:
    """One rank's table of mean ± sd per model and headline metric (best in bold), caveats,
    settings and answer line, with its machine-readable record."""
    metrics = [m for m in HEADLINE_METRICS if m in set(stats["metric"])]
    order = stats.drop_duplicates("model").sort_values(["kind", "model"])["model"].tolist()
    means = stats.pivot(index="model", columns="metric", values="mean")
    sds = stats.pivot(index="model", columns="metric", values="sd")
    seeds = _seed_counts(stats, metrics)
    most = max(seeds.values())
    title = f"## Rank k = {rank}" + (" (the reference rank: tuning, MCV)" if reference else "")
    lines = [title, "", f"{_seed_sentence(seeds)} (baselines are deterministic).", ""]
    header = [m if seeds[m] in (0, most) else f"{m} ({seeds[m]} seed{'s' * (seeds[m] != 1)})"
              for m in metrics]
    lines.append("| model | " + " | ".join(header) + " |")
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
    notes = _notes(stats)
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    lines += settings_table(stats)
    text, record = answer(stats, comparisons, dataset, primary_metric, runs, level)
    record |= {"rank": rank, "reference": reference}
    if source is not None:  # which input, at which depth: findings tabulate depth variants
        record |= {"input": str(source["path"]),
                   "depth": float((source.get("thin") or {}).get("fraction", 1.0))}
    lines += ["", text, "", f"<!-- {ANSWER_TAG} {json.dumps(record)} -->", ""]
    return lines


def _comparison_lines(comparisons: pd.DataFrame, level: float) -> list[str]:
    lines = ["## Paired comparisons", "",
             "Model minus reference on the same test cells (joined by cell name) and "
             "seeds. Intervals include seed-to-seed and cell-to-cell variation "
             "(`scae.stats`); within each table they are simultaneous at "
             f"{level:.0%} (Bonferroni over the table's m rows), and p is "
             "Bonferroni-adjusted. Verdict `no difference`: the interval contains 0. "
             "Rows with 1 seed vary test cells only."]
    titles = {"answer": "Ties with the best loss, and where PCA and the mean profile stand",
              "paired": "Each loss against mse and against PCA"}
    for (rank, family), members in comparisons.groupby(["rank", "family"], sort=False):
        if family == "rank":
            continue  # the rank table above
        lines += ["", f"### k = {rank}: {titles[family]} (m = {len(members)})", "",
                  "| model | vs | metric | seeds | mean difference | "
                  f"simultaneous {level:.0%} CI | p (adjusted) | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in members.itertuples():
            lines.append(
                f"| {row.model} | {row.reference} | {row.metric} | {row.n_seeds} | "
                f"{row.mean_difference:+.4f} | [{row.ci_low:+.4f}, {row.ci_high:+.4f}] | "
                f"{row.p_adjusted:.2g} | {row.verdict} |"
            )
    return lines


def markdown_summary(
    tidy: pd.DataFrame,
    comparisons: pd.DataFrame,
    dataset: str,
    primary_metric: str = "centred_cosine_mean",
    runs: pd.DataFrame | None = None,
    level: float = 0.95,
    preprocess: dict | None = None,
    reference_rank: int | None = None,
    source: dict | None = None,
) -> str:
    """The rank table and its crossing, then per latent rank the mean ± sd of every model
    and headline metric (best in bold), caveats and the answer, then the paired comparisons
    (the part :mod:`scae.findings` leaves out of the README). ``preprocess``: the dataset's
    preprocessing settings, stated under the title; ``reference_rank`` (default the largest)
    is the rank tuning and MCV ran at; ``source`` the dataset's configuration (its ``path``,
    and ``thin`` for a depth variant), recorded for :mod:`scae.findings`."""
    stats = aggregate(tidy)
    stats = stats[stats["dataset"] == dataset]
    ranks = ranks_in(stats)
    reference_rank = reference_rank or ranks[-1]
    lines = [f"# {dataset}: which loss reconstructs held-out cells best, and at which rank "
             "does an autoencoder beat PCA?", "",
             "Every model is scored on held-out test cells. **Bold**: best value per column, "
             "baselines included. Higher is better except for mse and the negative "
             f"log-likelihoods (nll). The answer ranks by `{primary_metric}`.", ""]
    if preprocess or source:
        lines += [_thin_sentence(source) + (_preprocess_sentence(preprocess) if preprocess
                                             else ""), ""]
    if comparisons.empty:
        comparisons = pd.DataFrame(columns=COMPARISON_COLUMNS)
    lines += _rank_lines(rank_table(stats, comparisons, primary_metric), primary_metric, level)
    for rank in ranks:
        runs_here = None
        if runs is not None:
            runs_here = runs[(runs["dataset"].str.removesuffix(MCV_SUFFIX) == dataset)
                             & (runs["rank"] == rank)]
        lines += _rank_section(at_rank(stats, rank),
                               comparisons[comparisons["rank"] == rank], dataset,
                               primary_metric, runs_here, level, rank, rank == reference_rank,
                               source)
    if len(comparisons):
        lines += _comparison_lines(comparisons, level)
    return "\n".join(lines).rstrip("\n") + "\n"
