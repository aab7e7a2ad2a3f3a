"""Snakemake entry point: one reference reconstruction (mean, PCA, PCA at the rank MCV picks,
library size, no denoising)."""

import anndata as ad
import numpy as np

from scae.baselines import baseline_outputs
from scae.io import rule_logging
from scae.outputs import write_run_outputs

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    adata = ad.read_h5ad(sm.input[0])
    latent, recon = baseline_outputs(
        sm.wildcards.baseline, adata, sm.params.n_components, sm.params.seed,
        sm.params.max_pca_rank, sm.params.input_scaling,
    )
    test_rows = np.flatnonzero(adata.obs["split"].to_numpy() == "test")
    write_run_outputs(adata, test_rows, latent, recon, sm.output.embedding,
                      sm.output.reconstruction, {"model": f"baseline_{sm.wildcards.baseline}"})
