"""Snakemake entry point: one reference reconstruction (mean, PCA at a rank, PCA at the rank
MCV picks, library size, no denoising) and its scores on the training cells."""

import anndata as ad

from scae.evaluation.baselines import baseline_model
from scae.io import rule_logging
from scae.outputs import write_scored_run

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    adata = ad.read_h5ad(sm.input[0])
    latent, reconstruct = baseline_model(
        sm.wildcards.baseline,
        adata,
        sm.params.n_components,
        sm.params.seed,
        sm.params.max_pca_rank,
        sm.params.input_scaling,
    )
    write_scored_run(
        adata,
        latent,
        reconstruct,
        sm.output.embedding,
        sm.output.reconstruction,
        {"model": f"baseline_{sm.wildcards.baseline}"},
    )
