"""Snakemake entry point: latent embedding of every cell, reconstructions of test cells."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
import anndata as ad
import torch

from scae.io import rule_logging
from scae.train import CellData, embed_and_reconstruct, load_model, resolve_device
from scae.outputs import write_run_outputs

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    torch.set_num_threads(sm.threads)
    device = resolve_device(sm.params.device)
    model, saved = load_model(Path(sm.input.model), device)
    adata = ad.read_h5ad(sm.input.data)
    data = CellData(adata, saved["input_scaling"])
    test_rows = data.rows("test")
    latent, recon = embed_and_reconstruct(model, data, test_rows, device)
    write_run_outputs(adata, test_rows, latent, recon, sm.output.embedding,
                      sm.output.reconstruction,
                      {"model": saved["loss"], "seed": saved["seed"],
                       "best_epoch": saved["best_epoch"]})
