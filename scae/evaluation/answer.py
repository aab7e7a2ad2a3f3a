"""The answer line of each latent rank in ``summary.md``, and its machine-readable record.

The answer names the loss with the best mean of the primary metric, the losses statistically
tied with it, where PCA at the same rank and the training-mean profile stand against it, the
runs that did not converge, and that there are no label metrics when the labels hold one
class. :mod:`scae.evaluation.markdown` puts the line in each rank's
section, with the record in an HTML comment tagged :data:`ANSWER_TAG` that
:mod:`scae.evaluation.findings` reads back.
"""

from __future__ import annotations

import pandas as pd

from ..registry import compared, kind_of
from .metrics import LABEL_CLASSES_TEST
from .ranks import RANK_VERDICTS
from .summary import COMPARISON_COLUMNS, best_loss, direction

#: Prefix of the machine-readable answer comment that :mod:`scae.evaluation.findings` reads.
ANSWER_TAG = "scae-answer:"


def _unconverged(runs: pd.DataFrame) -> str:
    """'d: `mse` seeds 0, 1; `nb` seed 2; d.mcv: …' for the runs that did not converge."""
    bad = runs[~runs["converged"].astype(bool)]
    parts = []
    for dataset, in_dataset in bad.groupby("dataset", sort=True):
        losses = [
            f"`{loss}` seed{'s' * (len(group) > 1)} {', '.join(map(str, group['seed']))}"
            for loss, group in in_dataset.groupby("model", sort=True)
        ]
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
    """Return the answer sentence and its record for :mod:`scae.evaluation.findings`.

    The record holds the best loss and the tied losses.

    The best loss has the best mean of ``primary_metric``; a loss is *tied* with it when their
    ``answer``-family interval contains 0. PCA and the mean profile are placed by the best
    loss's comparisons with them, and runs that did not converge are named.
    """
    best = best_loss(stats, primary_metric)
    means = stats[stats["metric"] == primary_metric].set_index("model")["mean"]
    n_seeds = int(
        stats.loc[(stats["metric"] == primary_metric) & (stats["model"] == best), "n"].iloc[0]
    )
    rule = "higher" if direction(primary_metric) == "higher" else "lower"
    text = (
        f"**Answer:** ranked by `{primary_metric}` ({rule} is better; mean over {n_seeds} "
        f"seed{'s' * (n_seeds != 1)} on test cells), the best loss is `{best}` "
        f"({means[best]:.4g})"
    )
    if comparisons.empty:
        comparisons = pd.DataFrame(columns=COMPARISON_COLUMNS)
    rows = comparisons[comparisons["family"] == "answer"]
    tied_text, tied = _tied_clause(rows, best, means, n_seeds, level)
    ranks = comparisons[comparisons["family"] == "rank"]
    text += tied_text + _baseline_clauses(rows, best, means, ranks)
    text += "."
    if n_seeds == 2:
        # t with one degree of freedom: a quantile above 100 at the answer's m, so seed scatter
        # of 10⁻³ already ties means 0.1 apart (docs/outputs.md, "How many seeds").
        text += (
            " Two seeds: the seed part of every interval has one degree of freedom, so a tie "
            "here says the two seeds cannot tell, not that the models are alike; three or "
            "more seeds resolve it."
        )
    if runs is not None and not runs["converged"].all():
        text += (
            " Not converged (all max_epochs run, best epoch among the last `patience`: "
            f"more epochs might change their scores): {_unconverged(runs)}."
        )
    if one_label_class(stats):
        text += (
            " No label metrics: one class (the labelled test cells hold a single label, so "
            "kNN accuracy, ARI, NMI and silhouette measure nothing)."
        )
    record = {"dataset": dataset, "primary_metric": primary_metric, "best": best, "tied": tied}
    return text, record


def one_label_class(stats: pd.DataFrame) -> bool:
    """Whether the runs' labelled test cells hold a single class (so no label metrics)."""
    classes = stats.loc[stats["metric"] == LABEL_CLASSES_TEST, "mean"]
    return bool(len(classes)) and bool((classes < 2).all())


def _tied_clause(
    rows: pd.DataFrame, best: str, means: pd.Series, n_seeds: int, level: float
) -> tuple[str, list[str]]:
    """Return the answer's clause on the losses tied with ``best``, and their names.

    The ties come from its ``answer``-family comparisons ``rows``.
    """
    against_best = rows[rows["reference"] == best]
    if not len(against_best):
        return "", []
    tied = sorted(against_best.loc[against_best["verdict"] == "no difference", "model"])
    confidence = f"{level:.0%} simultaneous intervals over seeds and test cells"
    if n_seeds == 1:
        confidence = f"{level:.0%} simultaneous intervals over test cells only (one seed)"
    if not tied:
        return f"; every other loss is worse ({confidence})", tied
    listed = ", ".join(f"`{t}` ({means[t]:.4g})" for t in tied)
    return f"; statistically tied with it ({confidence} contain 0): {listed}", tied


def _baseline_clauses(rows: pd.DataFrame, best: str, means: pd.Series, ranks: pd.DataFrame) -> str:
    """Return the answer's clauses placing ``best`` against PCA, the mean profile and peers.

    ``ranks`` are the ``rank``-family comparisons at this rank (the rank table's row).
    """
    text = ""
    peers = [
        (m, f"{compared(m).label} at the same rank") for m in means.index if kind_of(m) == "peer"
    ]
    for baseline, name in (
        ("baseline_pca", "PCA at the same rank"),
        ("baseline_mean", "the training-mean profile"),
        *sorted(peers),
    ):
        if baseline not in means:
            continue
        row = rows[(rows["model"] == best) & (rows["reference"] == baseline)]
        value = f"{means[baseline]:.4g}"
        if not len(row):
            text += f"; {name} scores {value}"
            continue
        relation = {
            "better": f"it beats {name} ({value})",
            "worse": f"{name} ({value}) beats it",
            "no difference": f"it ties with {name} ({value})",
        }[row["verdict"].iloc[0]]
        text += f"; {relation}"
        if baseline == "baseline_pca":
            text += _rank_table_clause(row.iloc[0], ranks, len(rows))
    return text


def _rank_table_clause(answer_row: pd.Series, ranks: pd.DataFrame, m: int) -> str:
    """Say so when the rank table places the best loss against PCA otherwise than the answer.

    Both test the same difference on the same cells and seeds, but each interval is
    simultaneous within its own table: the answer's ``answer_row`` over its ``m`` rows (9 with
    8 losses), the rank table's row in ``ranks`` over the ranks. With few seeds one can exclude
    0 and the other not; the answer then shows both verdicts and why they differ.
    """
    match = ranks[
        (ranks["model"] == answer_row["model"]) & (ranks["reference"] == answer_row["reference"])
    ]
    if not len(match) or match["verdict"].iloc[0] == answer_row["verdict"]:
        return ""
    row = match.iloc[0]
    return (
        f" within this answer's {m} simultaneous intervals ({_interval(answer_row)}), while "
        "the rank table's interval for the same difference, simultaneous over the ranks only "
        f"({_interval(row)}), says {RANK_VERDICTS[row['verdict']]}"
    )


def _interval(row: pd.Series) -> str:
    return f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
