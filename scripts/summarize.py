"""Snakemake entry point: gather every run's metrics into the dataset's tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
import pandas as pd

from scae.io import atomic_path, rule_logging
from scae.summary import wide_summary

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]) as log:
    tidy = pd.concat([pd.read_csv(path, sep="\t") for path in sm.input], ignore_index=True)
    summary = wide_summary(tidy)
    log.info("summary:\n%s", summary.to_string(index=False))
    with atomic_path(sm.output.tidy) as tmp:
        tidy.to_csv(tmp, sep="\t", index=False)
    with atomic_path(sm.output.summary) as tmp:
        summary.to_csv(tmp, sep="\t", index=False, float_format="%.5g")
