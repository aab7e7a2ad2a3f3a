"""Snakemake entry point: gather every run's metrics into the dataset's tables."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
import pandas as pd

from scae.io import atomic_path, rule_logging
from scae.summary import markdown_summary, merge_variants, paired_differences, wide_summary

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]) as log:
    tidy = merge_variants(
        pd.concat([pd.read_csv(path, sep="\t") for path in sm.input.metrics], ignore_index=True)
    )
    per_cell = {}
    for cells_path in sm.input.per_cell:
        metrics_path = cells_path.removesuffix(".per_cell.tsv.gz") + ".tsv"
        run = pd.read_csv(metrics_path, sep="\t", nrows=1).iloc[0]
        seed = None if pd.isna(run["seed"]) else int(run["seed"])
        per_cell[(run["model"], seed)] = pd.read_csv(cells_path, sep="\t")
    comparisons = paired_differences(per_cell)
    summary = wide_summary(tidy)
    markdown = markdown_summary(tidy, comparisons, sm.wildcards.dataset)
    log.info("\n%s", markdown)
    for path, frame in [(sm.output.tidy, tidy), (sm.output.summary, summary),
                        (sm.output.comparisons, comparisons)]:
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    with atomic_path(sm.output.markdown) as tmp:
        tmp.write_text(markdown)
