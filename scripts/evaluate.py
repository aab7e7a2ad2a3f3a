"""Snakemake entry point: score one run's test reconstructions (and embedding) on held-out cells."""

import anndata as ad
import numpy as np

from scae.evaluate import evaluate_run
from scae.io import atomic_path, rule_logging
from scae.metrics import tidy

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]) as log:
    values, per_cell = evaluate_run(
        ad.read_h5ad(sm.input.data),
        ad.read_h5ad(sm.input.reconstruction),
        ad.read_h5ad(sm.input.embedding),
        sm.params.label_key or None,
    )
    is_baseline = sm.wildcards.model == "baseline"
    rows = tidy(
        values,
        dataset=sm.wildcards.dataset,
        model=f"baseline_{sm.wildcards.run}" if is_baseline else sm.wildcards.model,
        kind="baseline" if is_baseline else "autoencoder",
        seed=np.nan if is_baseline else int(sm.wildcards.run.removeprefix("seed")),
    )
    log.info("metrics:\n%s", rows.to_string(index=False))
    with atomic_path(sm.output.per_cell) as tmp:
        per_cell.to_csv(tmp, sep="\t", index=False, compression="gzip")
    with atomic_path(sm.output.metrics) as tmp:
        rows.to_csv(tmp, sep="\t", index=False)
