"""Snakemake entry point: the per-cell, metric and training-curve figures of one dataset, at
its reference rank."""

import pandas as pd

from scae import layout
from scae.evaluation import plots
from scae.evaluation.summary import at_rank
from scae.io import atomic_path, rule_logging
from scae.outputs import run_label

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    tidy = at_rank(pd.read_csv(sm.input.tidy, sep="\t"), sm.params.rank)
    per_cell = {}
    for path in sm.input.per_cell:
        per_cell.setdefault(run_label(path), []).append(pd.read_csv(path, sep="\t"))
    per_cell = {name: pd.concat(tables) for name, tables in per_cell.items()}
    histories = {
        (run.model, run.seed): pd.read_csv(path, sep="\t")
        for path, run in ((p, layout.parse(p)) for p in sm.input.histories)
    }
    figures = [
        (sm.output.cosine, lambda p: plots.cosine_distributions(per_cell, p)),
        (sm.output.heatmap, lambda p: plots.metric_heatmap(tidy, p)),
        (sm.output.curves, lambda p: plots.training_curves(histories, p)),
    ]
    for output, draw in figures:
        with atomic_path(output) as tmp:
            draw(tmp)
