"""Snakemake entry point: score one run's test reconstructions (and embedding) on held-out cells."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
import warnings

import anndata as ad
import numpy as np
import pandas as pd

from scae.io import atomic_path, rule_logging
from scae.metrics import embedding_metrics, per_cell_metrics, summarize_reconstruction, tidy
from scae.outputs import EMBEDDING_KEY

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]) as log:
    data = ad.read_h5ad(sm.input.data)
    recon = ad.read_h5ad(sm.input.reconstruction)
    embedding = ad.read_h5ad(sm.input.embedding)
    truth = data[recon.obs_names].X
    per_cell = per_cell_metrics(truth, recon.X, data.var["train_mean"].to_numpy())
    values = summarize_reconstruction(per_cell, truth, recon.X)
    label_key = sm.params.label_key
    if EMBEDDING_KEY in embedding.obsm and label_key:
        if label_key in data.obs:
            values |= embedding_metrics(embedding.obsm[EMBEDDING_KEY], data.obs[label_key],
                                        data.obs["split"].to_numpy())
        else:
            warnings.warn(f"label_key {label_key!r} not in obs; label metrics skipped")
    is_baseline = sm.wildcards.model == "baseline"
    rows = tidy(
        values,
        dataset=sm.wildcards.dataset,
        model=f"baseline_{sm.wildcards.run}" if is_baseline else sm.wildcards.model,
        kind="baseline" if is_baseline else "autoencoder",
        seed=np.nan if is_baseline else int(sm.wildcards.run.removeprefix("seed")),
    )
    log.info("metrics:\n%s", rows.to_string(index=False))
    per_cell.insert(0, "cell", recon.obs_names.to_numpy())
    with atomic_path(sm.output.per_cell) as tmp:
        per_cell.to_csv(tmp, sep="\t", index=False, compression="gzip")
    with atomic_path(sm.output.metrics) as tmp:
        rows.to_csv(tmp, sep="\t", index=False)
