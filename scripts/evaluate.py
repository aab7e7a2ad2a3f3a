"""Snakemake entry point: score runs' test reconstructions (and embeddings) on held-out cells:
one baseline, or every loss of one rank and seed (the dataset is read once for all)."""

import anndata as ad
import numpy as np

from scae.evaluation.evaluate import evaluate_run
from scae.evaluation.metrics import tidy
from scae.io import atomic_path, rule_logging
from scae.outputs import run_label
from scae.registry import kind_of

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]) as log:
    data = ad.read_h5ad(sm.input.data)
    runs = zip(
        sm.input.embeddings,
        sm.input.reconstructions,
        sm.output.metrics,
        sm.output.per_cell,
        strict=True,
    )
    for embedding, reconstruction, metrics_path, per_cell_path in runs:
        values, per_cell = evaluate_run(
            data, ad.read_h5ad(reconstruction), ad.read_h5ad(embedding), sm.params.label_key or None
        )
        model = run_label(embedding)
        rows = tidy(
            values,
            dataset=sm.wildcards.dataset,
            model=model,
            kind=kind_of(model),
            rank=np.nan if sm.params.rank is None else sm.params.rank,
            seed=np.nan if sm.params.seed is None else sm.params.seed,
        )
        log.info("metrics of %s:\n%s", model, rows.to_string(index=False))
        with atomic_path(per_cell_path) as tmp:
            per_cell.to_csv(tmp, sep="\t", index=False, compression="gzip")
        with atomic_path(metrics_path) as tmp:
            rows.to_csv(tmp, sep="\t", index=False)
