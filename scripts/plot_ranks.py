"""Snakemake entry point: the rank curve and the forest plot of one dataset's answer."""

import pandas as pd

from scae.evaluation import plots
from scae.io import atomic_path, rule_logging

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    tidy = pd.read_csv(sm.input.tidy, sep="\t")
    ranks = pd.read_csv(sm.input.ranks, sep="\t")
    ranks["verdict"] = ranks["verdict"].fillna("")
    comparisons = pd.read_csv(sm.input.comparisons, sep="\t")
    with atomic_path(sm.output.curve) as tmp:
        plots.rank_curve(tidy, ranks, sm.params.primary_metric, tmp)
    with atomic_path(sm.output.forest) as tmp:
        plots.forest(comparisons, tmp)
