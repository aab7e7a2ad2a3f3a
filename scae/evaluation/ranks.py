"""Ranks as a dimension: which loss is best at each latent rank, and where PCA catches up.

At each rank the best loss is compared with PCA at that rank, with intervals simultaneous over
the ranks; the rank table (``ranks.tsv``) holds these comparisons beside the means on test and
training cells, and the crossing is read off it. The per-rank tables come from
:mod:`scae.evaluation.summary`; :mod:`scae.evaluation.markdown` writes them as text.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .metrics import TRAIN_PREFIX
from .stats import crossed_mean_difference
from .summary import (
    COMPARISON_COLUMNS,
    PER_CELL_BETTER,
    PER_CELL_OF,
    at_rank,
    best_loss,
    difference_table,
    paired_differences,
    ranks_in,
    with_intervals,
)

#: A ``rank``-family verdict (best loss − PCA-k) in words, as the rank table and the answer say it.
RANK_VERDICTS = {
    "better": "autoencoder better",
    "worse": "PCA better",
    "no difference": "no difference",
}
#: Columns of ranks.tsv (:func:`rank_table`).
RANK_COLUMNS = [
    "rank",
    "best",
    "metric",
    "best_mean",
    "best_train",
    "pca_mean",
    "pca_train",
    "mean_difference",
    "ci_low",
    "ci_high",
    "verdict",
]
#: A ranks.tsv column per peer run at that rank: its mean primary metric on test cells.
PEER_COLUMN = "{}_mean"


def rank_comparisons(
    per_cell: dict[int, dict[tuple[str, int | None], pd.DataFrame]],
    stats: pd.DataFrame,
    primary_metric: str = "centred_cosine_mean",
    level: float = 0.95,
) -> pd.DataFrame:
    """Compute every rank's paired differences, then the ``rank`` family.

    Every rank's :func:`~scae.evaluation.summary.paired_differences` is against that rank's
    best loss. In the ``rank`` family: at each rank, the best loss − PCA at that rank on the
    primary metric, with intervals simultaneous over the ranks (Bonferroni over their number).

    ``per_cell`` maps each rank to its runs' per-cell tables (the baselines without a rank
    included at every rank); ``stats`` is :func:`~scae.evaluation.summary.aggregate` of the
    tidy metrics.
    """
    frames, rank_rows = [], []
    metric = PER_CELL_OF[primary_metric]
    for rank, runs in sorted(per_cell.items()):
        best = best_loss(at_rank(stats, rank), primary_metric)
        frames.append(paired_differences(runs, best, primary_metric, level, rank))
        table = difference_table(runs, best, "baseline_pca", metric)
        if table is not None:
            rank_rows.append(
                {
                    "rank": rank,
                    "family": "rank",
                    "model": best,
                    "reference": "baseline_pca",
                    "metric": metric,
                    "better": PER_CELL_BETTER[metric],
                    "difference": crossed_mean_difference(table),
                }
            )
    frames.append(with_intervals(rank_rows, level))
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def rank_table(stats: pd.DataFrame, comparisons: pd.DataFrame, primary_metric: str) -> pd.DataFrame:
    """Build the rank table: one row per latent rank (:data:`RANK_COLUMNS`).

    Each row holds the best loss, its mean
    ``primary_metric`` on test cells and on training cells (``train_*``: the generalization
    gap), PCA's at that rank, and the ``rank``-family difference best − PCA with its
    interval and verdict (NaN / "" where PCA was not run); then, per peer run at any rank
    (:data:`~scae.registry.PEERS`), its mean ``primary_metric`` on test cells
    (:data:`PEER_COLUMN`; NaN at a rank it did not run at), never a candidate for "best".
    """
    from ..registry import PEERS

    peers = [name for name in PEERS if (stats["model"] == name).any()]
    rows = []
    family = comparisons[comparisons["family"] == "rank"] if len(comparisons) else comparisons
    for rank in ranks_in(stats):
        here = at_rank(stats, rank)
        best = best_loss(here, primary_metric)

        def mean(model: str, metric: str) -> float:
            value = here.loc[(here["model"] == model) & (here["metric"] == metric), "mean"]
            return float(value.iloc[0]) if len(value) else np.nan

        row = {
            "rank": rank,
            "best": best,
            "metric": primary_metric,
            "best_mean": mean(best, primary_metric),
            "best_train": mean(best, TRAIN_PREFIX + primary_metric),
            "pca_mean": mean("baseline_pca", primary_metric),
            "pca_train": mean("baseline_pca", TRAIN_PREFIX + primary_metric),
            "mean_difference": np.nan,
            "ci_low": np.nan,
            "ci_high": np.nan,
            "verdict": "",
        } | {PEER_COLUMN.format(peer): mean(peer, primary_metric) for peer in peers}
        match = family[family["rank"] == rank] if len(family) else family
        if len(match):
            found = match.iloc[0]
            row |= {k: found[k] for k in ("mean_difference", "ci_low", "ci_high", "verdict")}
        rows.append(row)
    return pd.DataFrame(rows, columns=RANK_COLUMNS + [PEER_COLUMN.format(p) for p in peers])


def crossing(table: pd.DataFrame) -> tuple[int | None, int | None]:
    """Return the ranks where the best autoencoder and PCA cross.

    Return (the largest rank at which the best autoencoder is better than PCA at that rank, the
    smallest at which PCA is better), each None when there is no such rank.
    """
    better = table.loc[table["verdict"] == "better", "rank"]
    worse = table.loc[table["verdict"] == "worse", "rank"]
    return (int(better.max()) if len(better) else None, int(worse.min()) if len(worse) else None)
