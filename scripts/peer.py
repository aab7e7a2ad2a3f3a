"""Snakemake entry point: train one peer (scVI or LDVAE, scae.peers) at one rank and seed on
the training cells, and write its embedding, test reconstructions and history."""

import anndata as ad
import torch

from scae.io import atomic_path, rule_logging
from scae.outputs import write_scored_run
from scae.peers import fit_peer, settings_of

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]) as log:
    torch.set_num_threads(sm.threads)
    adata = ad.read_h5ad(sm.input[0])
    device = sm.params.device
    fit = fit_peer(
        sm.wildcards.peer,
        adata,
        int(sm.wildcards.rank),
        int(sm.wildcards.seed),
        settings_of(sm.params.settings),
        accelerator={"auto": "auto", "cpu": "cpu", "cuda": "gpu"}[device],
    )
    log.info(
        "%s: %d epochs (cap %d), best validation ELBO at epoch %d, on %d training and %d "
        "validation cells",
        sm.wildcards.peer,
        len(fit.history),
        fit.meta["max_epochs"],
        int(fit.history.loc[fit.history["val_loss"].idxmin(), "epoch"]),
        len(fit.train_cells),
        len(fit.val_cells),
    )
    meta = fit.meta | {"train_cells": fit.train_cells, "val_cells": fit.val_cells}
    write_scored_run(
        adata, fit.latent, fit.reconstruct, sm.output.embedding, sm.output.reconstruction, meta
    )
    with atomic_path(sm.output.history) as tmp:
        fit.history.to_csv(tmp, sep="\t", index=False)
