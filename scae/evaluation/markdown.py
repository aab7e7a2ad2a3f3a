"""Write ``summary.md``: the tables of :mod:`scae.evaluation.summary` as text.

The tables become the text a reader reads – the rank table with its crossing
(:mod:`scae.evaluation.ranks`), per latent rank a section with notes on seeds and settings and
the one-line answer (:mod:`scae.evaluation.answer`, which names the runs that did not
converge), and the paired comparisons.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..config import MCV_SUFFIX
from ..outputs import RECIPE_SETTINGS, SETTING_PREFIX
from ..registry import PEERS
from .answer import ANSWER_TAG, answer
from .metrics import EMBEDDING_DIM
from .ranks import PEER_COLUMN, RANK_VERDICTS, crossing, rank_table
from .summary import (
    COMPARISON_COLUMNS,
    DENOISING_BASELINES,
    HEADLINE_METRICS,
    aggregate,
    at_rank,
    ranks_in,
)


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
        ((n, _),) = groups.items()
        return f"Mean ± sd over {n} training seed{'s' * (n != 1)} on held-out test cells"
    parts = [
        f"{n} seed{'s' * (n != 1)} for {', '.join(ms)}"
        for n, ms in sorted(groups.items(), reverse=True)
    ]
    return (
        "Mean ± sd over training seeds on held-out test cells — "
        + "; ".join(parts)
        + " (columns marked “(n seed)” rest on fewer seeds than the others: a single seed "
        "has no sd and says nothing about seed-to-seed variation)"
    )


def _notes(stats: pd.DataFrame) -> list[str]:
    """Caveats: MCV metrics the mean profile wins, and the rank MCV chose for PCA."""
    notes = []
    means = stats.pivot_table(index="model", columns="metric", values="mean")
    models = stats.loc[
        (stats["kind"] == "autoencoder") | stats["model"].isin(DENOISING_BASELINES), "model"
    ].unique()
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
                "2019)"
                + (
                    f", beside `baseline_pca` at the latent dim k = {int(pca)}"
                    if pca is not None and pd.notna(pca)
                    else ""
                )
                + "."
            )
    return notes


def settings_table(stats: pd.DataFrame, capped: frozenset[str] = frozenset()) -> list[str]:
    """Return Markdown lines of the settings each loss trained with.

    The settings are the ``setting_*`` metrics, with whether tuning chose them (``capped``: the
    losses whose chosen trial ran into the epoch cap still improving, marked so); no lines when
    no run recorded any.
    """
    settings = stats[stats["metric"].str.startswith(SETTING_PREFIX)]
    if settings.empty:
        return []
    table = settings.pivot(index="model", columns="metric", values="mean")
    hidden = sorted(
        (c for c in table if c.startswith(f"{SETTING_PREFIX}hidden_")),
        key=lambda c: int(c.rsplit("_", 1)[1]),
    )
    lines = [
        "",
        "Settings each loss trained with (every seed alike; `tuned`: chosen on "
        "validation cells by the tune stage, see `tuning/{loss}/trials.tsv`):",
        "",
        "| loss | learning_rate | weight_decay | batch_size | dropout | hidden | tuned |",
        "|---|---|---|---|---|---|---|",
    ]
    recipes = [name for name in RECIPE_SETTINGS if SETTING_PREFIX + name in table]
    if recipes:
        lines[-2] = lines[-2].replace(" tuned |", " tuned | " + " | ".join(recipes) + " |")
        lines[-1] += "---|" * len(recipes)
    for model, row in table.iterrows():
        widths = ", ".join(f"{row[c]:.0f}" for c in hidden if pd.notna(row[c]))
        tuned = "yes" if row.get(f"{SETTING_PREFIX}tuned", 0) == 1 else "no"
        if tuned == "yes" and model in capped:
            tuned = "yes, **at the cap**"
        lines.append(
            f"| {model} | {row[SETTING_PREFIX + 'learning_rate']:.3g} | "
            f"{row[SETTING_PREFIX + 'weight_decay']:.3g} | "
            f"{row[SETTING_PREFIX + 'batch_size']:.0f} | {row[SETTING_PREFIX + 'dropout']:.3g}"
            f" | [{widths}] | {tuned} |"
            + "".join(f" {np.nan_to_num(row[SETTING_PREFIX + r]):g} |" for r in recipes)
        )
    return lines


def capped_trials(tuning: dict[str, tuple[pd.DataFrame, dict]]) -> pd.DataFrame:
    """Return the tuning trials that ran into the epoch cap still improving.

    ``tuning`` maps each loss to its ``trials.tsv`` table and its ``best.yaml``. A trial is
    capped when it completed with ``converged`` False: it ran all ``tune.max_epochs`` with its
    best epoch among the last ``train.patience``, so the cap, not early stopping, ended it.
    One row per such trial: ``loss``, ``trial``, ``epochs`` (the cap) and ``chosen`` (the
    trial whose settings the loss trains with).
    """
    rows = []
    for loss, (trials, best) in sorted(tuning.items()):
        capped = trials[trials["converged"].astype("string").str.lower().eq("false")]
        for trial in capped.itertuples():
            rows.append(
                {
                    "loss": loss,
                    "trial": int(trial.trial),
                    "epochs": int(trial.epochs),
                    "chosen": int(trial.trial) == int(best["trial"]),
                }
            )
    columns = ["loss", "trial", "epochs", "chosen"]
    return pd.DataFrame(rows, columns=columns)


def _tuning_lines(capped: pd.DataFrame) -> list[str]:
    """Return the caveat under the rank table when tuning trials ran into their epoch cap."""
    if capped.empty:
        return []
    named = [
        f"`{loss}` trial{'s' * (len(trials) > 1)} "
        + ", ".join(
            f"{trial.trial}" + (" (**chosen**)" if trial.chosen else "")
            for trial in trials.itertuples()
        )
        for loss, trials in capped.groupby("loss", sort=True)
    ]
    return [
        f"**Tuning:** {len(capped)} trial{'s' * (len(capped) != 1)} ran into the "
        f"{capped['epochs'].max()}-epoch cap still improving: {'; '.join(named)}. "
        + (
            "A chosen trial's settings train every run of its loss, and it might not have won "
            "had it run on"
            if capped["chosen"].any()
            else "Had they run on, one might have been chosen"
        )
        + ": raise `tune.max_epochs` to settle it (`tuning/{loss}/trials.tsv`, `converged` "
        "False).",
        "",
    ]


def _thin_sentence(source: dict | None) -> str:
    thin = (source or {}).get("thin")
    if not thin:
        return ""
    return (
        f"Molecules thinned binomially to a fraction {thin['fraction']:g} of the input's "
        f"(seed {thin.get('seed', 0)}) before QC. "
    )


def _preprocess_sentence(settings: dict) -> str:
    return (
        f"Preprocessed with QC min_genes = {settings['min_genes']}, max_pct_mito = "
        f"{settings['max_pct_mito']}, min_cells = {settings['min_cells']} (genes), "
        f"{settings['n_top_genes']} HVGs, target_sum = {settings['target_sum']:g}; split "
        f"test_fraction = {settings['test_fraction']}, val_fraction = "
        f"{settings['val_fraction']}, split_seed = {settings['split_seed']}."
    )


def crossing_sentence(table: pd.DataFrame) -> str:
    """Put the crossing in words (:func:`scae.evaluation.ranks.crossing`).

    One rank cannot place a crossing: the sentence then says what that rank's verdict is and
    how to find the crossing, rather than "beats PCA at no rank" read off a single row.
    """
    if len(table) == 1:
        row = table.iloc[0]
        return (
            f"**Crossing:** one rank only (k = {row['rank']}: "
            f"{RANK_VERDICTS.get(row['verdict'], 'no verdict')}); list ranks in "
            "`model.latent_dim` (e.g. [4, 8, 16, 32]) to find the crossing."
        )
    largest, smallest = crossing(table)
    parts = [
        (
            f"the best autoencoder beats PCA at the same rank up to k = {largest}"
            if largest is not None
            else "the best autoencoder beats PCA at no rank"
        ),
        (
            f"PCA is better from k = {smallest}"
            if smallest is not None
            else "PCA is better at no rank"
        ),
    ]
    ties = table.loc[table["verdict"] == "no difference", "rank"].tolist()
    text = "**Crossing:** " + "; ".join(parts)
    if ties:
        text += f"; tied at k = {', '.join(map(str, ties))}"
    if largest is not None and smallest is not None and smallest < largest:
        text += " (not one crossing: the verdicts change direction more than once)"
    return text + "."


def _rank_lines(table: pd.DataFrame, primary_metric: str, level: float) -> list[str]:
    """Return the rank table, its crossing and the two figures of :mod:`scae.evaluation.plots`."""
    verdicts = {**RANK_VERDICTS, "": "–"}
    peers = [p for p in PEERS if PEER_COLUMN.format(p) in table]
    lines = [
        "## At which rank does an autoencoder beat PCA?",
        "",
        f"Per latent rank k: the loss with the best mean `{primary_metric}` on test cells, "
        "the same metric on its training cells (the generalization gap), PCA at rank k, "
        "and best − PCA-k on the same test cells with an interval over seeds and cells, "
        f"simultaneous at {level:.0%} over the {len(table)} rank"
        f"{'s' * (len(table) != 1)}"
        + (
            "; then each peer's mean on the same test cells "
            f"({', '.join(PEERS[p].label for p in peers)}: beside the answer, never ranked "
            "among the losses)."
            if peers
            else "."
        ),
        "",
        "| k | best loss | test | train | PCA-k test | PCA-k train | best − PCA-k | "
        f"simultaneous {level:.0%} CI | verdict |"
        + "".join(f" {PEERS[p].label} test |" for p in peers),
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(peers),
    ]

    def number(value: float, fmt: str = ".4f") -> str:
        return "–" if pd.isna(value) else format(value, fmt)

    for row in table.itertuples():
        interval = "–" if pd.isna(row.ci_low) else f"[{row.ci_low:+.4f}, {row.ci_high:+.4f}]"
        lines.append(
            f"| {row.rank} | `{row.best}` | {number(row.best_mean)} | {number(row.best_train)} | "
            f"{number(row.pca_mean)} | {number(row.pca_train)} | "
            f"{number(row.mean_difference, '+.4f')} | {interval} | {verdicts[row.verdict]} |"
            + "".join(f" {number(getattr(row, PEER_COLUMN.format(p)))} |" for p in peers)
        )
    lines += [
        "",
        crossing_sentence(table),
        "",
        "![rank curve](plots/rank_curve.png) ![answer](plots/forest.png)",
        "",
    ]
    return lines


def _rank_section(
    stats: pd.DataFrame,
    comparisons: pd.DataFrame,
    dataset: str,
    primary_metric: str,
    runs: pd.DataFrame | None,
    level: float,
    rank: int,
    reference: bool,
    source: dict | None = None,
    capped: frozenset[str] = frozenset(),
) -> list[str]:
    """Return one rank's section, with its machine-readable record.

    The section holds a table of mean ± sd per model and headline metric (best in bold), caveats,
    settings and the answer line.
    """
    metrics = [m for m in HEADLINE_METRICS if m in set(stats["metric"])]
    order = stats.drop_duplicates("model").sort_values(["kind", "model"])["model"].tolist()
    means = stats.pivot(index="model", columns="metric", values="mean")
    sds = stats.pivot(index="model", columns="metric", values="sd")
    seeds = _seed_counts(stats, metrics)
    most = max(seeds.values())
    title = f"## Rank k = {rank}" + (" (the reference rank: tuning, MCV)" if reference else "")
    lines = [title, "", f"{_seed_sentence(seeds)} (baselines are deterministic).", ""]
    header = [
        m if seeds[m] in (0, most) else f"{m} ({seeds[m]} seed{'s' * (seeds[m] != 1)})"
        for m in metrics
    ]
    lines.append("| model | " + " | ".join(header) + " |")
    lines.append("|---|" + "---|" * len(metrics))
    best = {
        m: (means[m].max() if HEADLINE_METRICS[m] == "higher" else means[m].min()) for m in metrics
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
    lines += settings_table(stats, capped)
    text, record = answer(stats, comparisons, dataset, primary_metric, runs, level)
    record |= {"rank": rank, "reference": reference}
    if source is not None:  # which input, at which depth: findings tabulate depth variants
        record |= {
            "input": str(source["path"]),
            "depth": float((source.get("thin") or {}).get("fraction", 1.0)),
        }
    lines += ["", text, "", f"<!-- {ANSWER_TAG} {json.dumps(record)} -->", ""]
    return lines


def _comparison_lines(comparisons: pd.DataFrame, level: float) -> list[str]:
    lines = [
        "## Paired comparisons",
        "",
        "Model minus reference on the same test cells (joined by cell name) and "
        "seeds. Intervals include seed-to-seed and cell-to-cell variation "
        "(`scae.evaluation.stats`); within each table they are simultaneous at "
        f"{level:.0%} (Bonferroni over the table's m rows), and p is "
        "Bonferroni-adjusted. Verdict `no difference`: the interval contains 0. "
        "Rows with 1 seed vary test cells only.",
    ]
    titles = {
        "answer": "Ties with the best loss, and where PCA and the mean profile stand",
        "paired": "Each loss against mse and against PCA",
    }
    for (rank, family), members in comparisons.groupby(["rank", "family"], sort=False):
        if family == "rank":
            continue  # the rank table above
        lines += [
            "",
            f"### k = {rank}: {titles[family]} (m = {len(members)})",
            "",
            "| model | vs | metric | seeds | mean difference | "
            f"simultaneous {level:.0%} CI | p (adjusted) | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in members.itertuples():
            lines.append(
                f"| {row.model} | {row.reference} | {row.metric} | {row.n_seeds} | "
                f"{row.mean_difference:+.4f} | [{row.ci_low:+.4f}, {row.ci_high:+.4f}] | "
                f"{row.p_adjusted:.2g} | {row.verdict} |"
            )
    return lines


def _heading(
    dataset: str,
    primary_metric: str,
    preprocess: dict | None,
    source: dict | None,
    orientation: str | None = None,
) -> list[str]:
    """Return the page's title, how to read it, and how the input was read and preprocessed."""
    lines = [
        f"# {dataset}: which loss reconstructs held-out cells best, and at which rank "
        "does an autoencoder beat PCA?",
        "",
        "Every model is scored on held-out test cells. **Bold**: best value per column, "
        "baselines included. Higher is better except for mse and the negative "
        f"log-likelihoods (nll). The answer ranks by `{primary_metric}`.",
        "",
    ]
    if preprocess or source or orientation:
        lines += [
            (f"{orientation} " if orientation else "")
            + _thin_sentence(source)
            + (_preprocess_sentence(preprocess) if preprocess else ""),
            "",
        ]
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
    orientation: str | None = None,
    tuning: dict[str, tuple[pd.DataFrame, dict]] | None = None,
) -> str:
    """Return the text of ``summary.md``.

    It holds the rank table and its crossing, then per latent rank the mean ± sd of every model
    and headline metric (best in bold), caveats and the answer, then the paired comparisons
    (the part :mod:`scae.evaluation.findings` leaves out of the README). ``preprocess``: the
    dataset's preprocessing settings, stated under the title; ``reference_rank`` (default the
    largest) is the rank tuning and MCV ran at; ``source`` the dataset's configuration (its
    ``path``, and ``thin`` for a depth variant), recorded for :mod:`scae.evaluation.findings`;
    ``orientation`` how the input's axes were read, and the evidence (stated under the title);
    ``tuning`` each tuned loss's trials and ``best.yaml`` (:func:`capped_trials`: trials that
    ran into the epoch cap are named under the rank table and in the settings tables).
    """
    stats = aggregate(tidy)
    stats = stats[stats["dataset"] == dataset]
    ranks = ranks_in(stats)
    reference_rank = reference_rank or ranks[-1]
    lines = _heading(dataset, primary_metric, preprocess, source, orientation)
    if comparisons.empty:
        comparisons = pd.DataFrame(columns=COMPARISON_COLUMNS)
    lines += _rank_lines(rank_table(stats, comparisons, primary_metric), primary_metric, level)
    capped = capped_trials(tuning or {})
    lines += _tuning_lines(capped)
    chosen_capped = frozenset(capped.loc[capped["chosen"], "loss"])
    for rank in ranks:
        runs_here = None
        if runs is not None:
            runs_here = runs[
                (runs["dataset"].str.removesuffix(MCV_SUFFIX) == dataset) & (runs["rank"] == rank)
            ]
        lines += _rank_section(
            at_rank(stats, rank),
            comparisons[comparisons["rank"] == rank],
            dataset,
            primary_metric,
            runs_here,
            level,
            rank,
            rank == reference_rank,
            source,
            chosen_capped,
        )
    if len(comparisons):
        lines += _comparison_lines(comparisons, level)
    return "\n".join(lines).rstrip("\n") + "\n"
