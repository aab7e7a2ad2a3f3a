"""Snakemake entry point: the training-mean and PCA reference reconstructions."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
import anndata as ad
import numpy as np

from scae.baselines import fit_pca, mean_reconstruction, pca_embed_and_reconstruct
from scae.io import rule_logging
from scae.outputs import write_run_outputs

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]) as log:
    adata = ad.read_h5ad(sm.input[0])
    split = adata.obs["split"].to_numpy()
    test_rows = np.flatnonzero(split == "test")
    if sm.wildcards.baseline == "mean":
        latent = None
        recon = mean_reconstruction(adata.var["train_mean"].to_numpy(), len(test_rows))
    else:
        k = min(sm.params.n_components, adata.n_vars - 1)
        pca = fit_pca(adata.X[split == "train"], k, sm.params.seed)
        log.info("PCA k=%d explains %.3f of training variance", k,
                 pca.explained_variance_ratio_.sum())
        latent, recon = pca_embed_and_reconstruct(pca, adata.X, test_rows)
    write_run_outputs(adata, test_rows, latent, recon, sm.output.embedding,
                      sm.output.reconstruction, {"model": f"baseline_{sm.wildcards.baseline}"})
