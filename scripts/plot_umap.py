"""Snakemake entry point: a UMAP panel of every model's embedding of one dataset."""

import anndata as ad

from scae.evaluation import plots
from scae.io import atomic_path, rule_logging
from scae.outputs import EMBEDDING_KEY, run_label

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    embeddings, labels = {}, None
    for path in sm.input.embeddings:
        run = ad.read_h5ad(path)
        embeddings[run_label(path)] = run.obsm[EMBEDDING_KEY]
        if sm.params.label_key in run.obs:
            labels = run.obs[sm.params.label_key]
    with atomic_path(sm.output.umap) as tmp:
        plots.embeddings_umap(embeddings, labels, tmp)
