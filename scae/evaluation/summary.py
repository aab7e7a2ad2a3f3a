"""Tables that answer "which loss?" and "at which rank does an autoencoder beat PCA?".

They hold runs beside baselines, mean ± sd over seeds, and paired differences with intervals over
seeds and cells; :mod:`scae.evaluation.ranks` builds the rank table and its crossing from them.
:mod:`scae.evaluation.markdown` writes them as text.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import MCV_SUFFIX
from ..layout import parse
from ..registry import compared, kind_of
from .metrics import EMBEDDING_DIM, METRICS, PER_CELL_SUMMARY
from .stats import bonferroni, crossed_mean_difference

#: What identifies a run in the tidy tables; ``rank`` (the latent rank) and ``seed`` are
#: missing for the baselines that have none (the mean profile, library size, MCV's).
KEYS = ["dataset", "kind", "model", "rank", "seed"]


#: Metrics in the Markdown summary, with the direction that is better (views of
#: :data:`scae.evaluation.metrics.METRICS`, the one registry).
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
COMPARISON_COLUMNS = [
    "rank",
    "family",
    "model",
    "reference",
    "metric",
    "better",
    "n_seeds",
    "n_cells",
    "mean_difference",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "verdict",
]


def merge_variants(tidy: pd.DataFrame) -> pd.DataFrame:
    """Fold a dataset's cross-validation variant into it.

    Keep only the variant's ``mcv_*`` metrics and the embedding width of runs the main dataset lacks
    (the rank ``baseline_pca_mcv_rank`` chose; every other run has the same width in both variants).
    """
    variant = tidy["dataset"].str.endswith(MCV_SUFFIX)
    keep = ~variant | tidy["metric"].str.startswith("mcv_") | (tidy["metric"] == EMBEDDING_DIM)
    merged = tidy[keep].assign(
        dataset=tidy["dataset"].str.removesuffix(MCV_SUFFIX), _variant=variant[keep]
    )
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
    rows = tidy.assign(
        seed=tidy["seed"].fillna(-1).astype(int), rank=tidy["rank"].fillna(-1).astype(int)
    )
    wide = rows.pivot_table(index=KEYS, columns="metric", values="value", aggfunc="first")
    wide = wide.reset_index()
    wide.columns.name = None
    leading = [m for m in HEADLINE_METRICS if m in wide]
    others = sorted(c for c in wide.columns if c not in KEYS and c not in leading)
    training = []
    if convergence is not None:
        training = ["epochs", "best_epoch", "converged"]
        wide = wide.merge(
            convergence[["dataset", "model", "rank", "seed", *training]],
            on=["dataset", "model", "rank", "seed"],
            how="left",
        )
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
    grouped = tidy.groupby(
        ["dataset", "kind", "model", "rank", "metric"], sort=False, dropna=False
    )["value"]
    return grouped.agg(mean="mean", sd="std", n="count").reset_index()


def read_histories(paths) -> dict[tuple[str, int, str, int], pd.DataFrame]:
    """Read the training histories in ``paths``, keyed by (dataset, rank, loss, seed).

    Map (dataset, rank, loss, seed) → history of every
    ``results/{dataset}/k{rank}/models/{loss}/seed{seed}/history.tsv`` in ``paths``.
    """
    histories = {}
    for path in paths:
        run = parse(path)
        histories[(run.dataset, run.rank, run.model, run.seed)] = pd.read_csv(path, sep="\t")
    return histories


def convergence(
    histories: dict[tuple[str, int, str, int], pd.DataFrame], max_epochs: int, patience: int
) -> pd.DataFrame:
    """Summarize each (dataset, rank, loss, seed) training history.

    Give ``epochs`` run, ``best_epoch`` (first minimum of ``val_loss``, the weights kept) and
    ``converged``.

    A run is *not converged* when it ran all ``max_epochs`` and its best epoch lies within the
    last ``patience`` of them (best_epoch > max_epochs − patience): early stopping never fired,
    the validation loss was still improving, and more epochs might have changed its scores.
    A history with ``max_epochs`` and ``patience`` columns (a peer's, trained with its own
    settings) is judged by those.
    """
    rows = []
    for (dataset, rank, loss, seed), history in sorted(histories.items()):
        cap, patience_of = max_epochs, patience
        if "max_epochs" in history:
            cap, patience_of = int(history["max_epochs"].iloc[0]), int(history["patience"].iloc[0])
        epochs = int(history["epoch"].max())
        best = int(history.loc[history["val_loss"].idxmin(), "epoch"])
        rows.append(
            {
                "dataset": dataset,
                "rank": rank,
                "model": loss,
                "seed": seed,
                "epochs": epochs,
                "best_epoch": best,
                "converged": not (epochs >= cap and best > cap - patience_of),
            }
        )
    return pd.DataFrame(
        rows, columns=["dataset", "rank", "model", "seed", "epochs", "best_epoch", "converged"]
    )


def at_rank(frame: pd.DataFrame, rank: int) -> pd.DataFrame:
    """Return the rows of runs at latent ``rank`` and of the runs without a rank.

    The runs without a rank are the baselines every rank is compared with.
    """
    return frame[(frame["rank"] == rank) | frame["rank"].isna()]


def ranks_in(frame: pd.DataFrame) -> list[int]:
    """Return the latent ranks of a tidy or aggregated table, ascending."""
    return sorted(int(r) for r in frame["rank"].dropna().unique())


def direction(metric: str) -> str:
    """'higher' or 'lower': which values of a headline or per-cell metric are better."""
    return HEADLINE_METRICS.get(metric) or PER_CELL_BETTER[metric]


def best_loss(stats: pd.DataFrame, primary_metric: str) -> str:
    """Return the loss with the best mean over seeds of ``primary_metric``.

    ``stats`` is the output of :func:`aggregate`.
    """
    rows = stats[(stats["kind"] == "autoencoder") & (stats["metric"] == primary_metric)]
    if rows.empty:
        raise ValueError(
            f"summary.primary_metric {primary_metric!r} has no autoencoder values; "
            f"choose one of {', '.join(PER_CELL_OF)}"
        )
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
    if not compared(reference).seeded:
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
        if (
            not scores.index.is_unique
            or len(scores) != len(cells)
            or not cells.isin(scores.index).all()
        ):
            raise ValueError(
                f"per-cell scores of {_run_name(key)} cover other test cells than those of "
                f"{_run_name(first)} ({int((~cells.isin(scores.index)).sum())} missing, "
                f"{len(scores) - int(scores.index.isin(cells).sum())} extra, "
                f"{int(scores.index.duplicated().sum())} repeated); rerun both runs' evaluate "
                "jobs (snakemake --forcerun evaluate)"
            )
        return scores.reindex(cells).to_numpy(np.float64)

    return np.vstack([aligned(a) - aligned(b) for a, b in pairs])


def comparison_plan(
    losses: list[str],
    baselines: list[str],
    best: str,
    primary_metric: str,
    peers: list[str] = (),
) -> list[tuple[str, str, str, str]]:
    """(family, model, reference, per-cell metric) of every paired comparison.

    * ``answer``: every other loss against the best one, and the best against PCA, the
      mean profile and each peer, on the primary metric — the comparisons the answer line
      rests on;
    * ``paired``: every loss against ``mse`` and against PCA on :data:`PAIRED_METRICS` (and the
      primary metric's per-cell score).
    """
    primary = PER_CELL_OF[primary_metric]
    plan = [("answer", loss, best, primary) for loss in losses if loss != best]
    plan += [
        ("answer", best, b, primary) for b in ("baseline_pca", "baseline_mean") if b in baselines
    ]
    plan += [("answer", best, peer, primary) for peer in peers]
    metrics = list(dict.fromkeys([*PAIRED_METRICS, primary]))
    plan += [
        ("paired", loss, reference, metric)
        for reference in REFERENCES
        if reference in losses or reference in baselines
        for loss in losses
        if loss != reference
        for metric in metrics
    ]
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
    """Compute model − reference per-cell differences with simultaneous intervals per family.

    The comparisons are for the runs of one latent ``rank`` (recorded in the ``rank`` column).

    ``per_cell`` maps (model, seed) — seed None for baselines — to its per-cell table (a
    ``cell`` column and one column per score). Each comparison's seeds × cells table
    (:func:`difference_table`) gets the interval of :mod:`scae.evaluation.stats`, which includes
    seed-to-seed and cell-to-cell variation; within a family of m comparisons
    (:func:`comparison_plan`) each interval has level 1 − (1 − ``level``)/m (Bonferroni), so
    all of a family's intervals hold together with probability ≥ ``level``, and
    ``p_adjusted`` = min(1, m·p). Verdict: better / worse when the interval excludes 0,
    ``no difference`` when it contains 0.
    """
    losses = sorted({m for m, _ in per_cell if kind_of(m) == "autoencoder"})
    baselines = sorted({m for m, _ in per_cell if kind_of(m) == "baseline"})
    peers = sorted({m for m, _ in per_cell if kind_of(m) == "peer"})
    rows = []
    for family, model, reference, metric in comparison_plan(
        losses, baselines, best, primary_metric, peers
    ):
        table = difference_table(per_cell, model, reference, metric)
        if table is not None:
            rows.append(
                {
                    "rank": rank,
                    "family": family,
                    "model": model,
                    "reference": reference,
                    "metric": metric,
                    "better": PER_CELL_BETTER[metric],
                    "difference": crossed_mean_difference(table),
                }
            )
    return with_intervals(rows, level)


def with_intervals(rows: list[dict], level: float) -> pd.DataFrame:
    """Return the :data:`COMPARISON_COLUMNS` of comparisons given with their ``difference``.

    Each ``difference`` is a :class:`scae.evaluation.stats.MeanDifference`. Within each family of m
    rows, the table gives intervals at level 1 − (1 − ``level``)/m and Bonferroni-adjusted p, and
    the verdict.
    """
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
    frame["verdict"] = [
        _verdict(lo, hi, b) for lo, hi, b in zip(frame["ci_low"], frame["ci_high"], frame["better"])
    ]
    return frame[COMPARISON_COLUMNS]
