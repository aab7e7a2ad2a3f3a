"""Snakemake entry point: gather every run's metrics into the dataset's tables and answer."""

from pathlib import Path

import pandas as pd
import yaml

from scae import layout
from scae.evaluation.markdown import markdown_summary
from scae.evaluation.ranks import rank_comparisons, rank_table
from scae.evaluation.summary import (
    aggregate,
    convergence,
    merge_variants,
    read_histories,
    wide_summary,
)
from scae.io import atomic_path, read_scae_uns, rule_logging

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]) as log:
    settings = sm.params.summary
    primary, level = settings["primary_metric"], settings["confidence_level"]
    tidy = merge_variants(
        pd.concat([pd.read_csv(path, sep="\t") for path in sm.input.metrics], ignore_index=True)
    )
    # Per-cell scores by rank; the baselines without a rank (scope "shared") join every rank.
    ranked, shared = {}, {}
    for cells_path in sm.input.per_cell:
        run = layout.parse(cells_path)  # which run, from where the file lies
        table = pd.read_csv(cells_path, sep="\t")
        if run.rank is None:
            shared[(run.label, run.seed)] = table
        else:
            ranked.setdefault(run.rank, {})[(run.label, run.seed)] = table
    per_cell = {rank: runs | shared for rank, runs in ranked.items()}
    runs = convergence(read_histories(sm.input.histories), sm.params.max_epochs, sm.params.patience)
    stats = aggregate(tidy)
    comparisons = rank_comparisons(per_cell, stats, primary, level)
    ranks = rank_table(stats, comparisons, primary)
    summary = wide_summary(tidy, runs)
    markdown = markdown_summary(
        tidy,
        comparisons,
        sm.wildcards.dataset,
        primary,
        runs,
        level,
        preprocess=sm.params.preprocess,
        reference_rank=sm.params.reference_rank,
        source=sm.params.dataset,
        orientation=read_scae_uns(sm.input.data).get("orientation", {}).get("sentence"),
        tuning={  # results/{dataset}/tuning/{loss}/{trials.tsv,best.yaml}
            Path(trials).parent.name: (
                pd.read_csv(trials, sep="\t"),
                yaml.safe_load(Path(best).read_text()),
            )
            for trials, best in zip(sm.input.trials, sm.input.choices, strict=True)
        },
    )
    log.info("\n%s", markdown)
    for path, frame in [
        (sm.output.tidy, tidy),
        (sm.output.summary, summary),
        (sm.output.comparisons, comparisons),
        (sm.output.ranks, ranks),
    ]:
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_path(sm.output.markdown) as tmp:
        tmp.write_text(markdown)
