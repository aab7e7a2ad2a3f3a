"""Snakemake entry point: every loss's tuning trials of one dataset in one figure."""

from pathlib import Path

import pandas as pd

from scae.evaluation import plots
from scae.io import atomic_path, rule_logging

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    # results/{dataset}/tuning/{loss}/trials.tsv
    trials = {Path(path).parent.name: pd.read_csv(path, sep="\t") for path in sm.input.trials}
    with atomic_path(sm.output.figure) as tmp:
        plots.tuning_trials(trials, sm.params.criterion, tmp)
