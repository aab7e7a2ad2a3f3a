"""Snakemake entry point: one reference reconstruction (mean, PCA at a rank, PCA at the rank
MCV picks, library size, no denoising) and its scores on the training cells."""

import anndata as ad
import numpy as np

from scae.evaluation.baselines import baseline_model
from scae.evaluation.metrics import training_scores
from scae.io import rule_logging
from scae.outputs import write_run_outputs

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
    split = adata.obs["split"].to_numpy()
    fitted = training_scores(
        adata.X,
        reconstruct,
        np.flatnonzero(split == "train"),
        adata.var["train_mean"].to_numpy(),
        adata.var["train_std"].to_numpy(),
    )
    test_rows = np.flatnonzero(split == "test")
    write_run_outputs(
        adata,
        test_rows,
        latent,
        reconstruct(test_rows),
        sm.output.embedding,
        sm.output.reconstruction,
        {"model": f"baseline_{sm.wildcards.baseline}", "train_scores": fitted},
    )
