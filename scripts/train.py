"""Snakemake entry point: train one autoencoder for a dataset × rank × loss × seed through the
public API (scae.Autoencoder), then write its model files, its embedding of every cell, its
reconstructions of the test cells and its scores on the training cells."""

from pathlib import Path

import anndata as ad
import torch
import yaml

from scae import Autoencoder
from scae.io import rule_logging
from scae.outputs import write_trained_model
from scae.train import keep_freed_memory
from scae.train.trainer import JOB_SETTINGS
from scae.train.tune import apply_best

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]) as log:
    torch.set_num_threads(sm.threads)
    keep_freed_memory()  # minibatch buffers reused, not page-faulted in every step
    adata = ad.read_h5ad(sm.input.data)
    label_key = sm.params.label_key if sm.params.label_key in adata.obs else None
    Autoencoder.setup_anndata(adata, layer="counts", labels_key=label_key)
    settings, train = dict(sm.params.model), dict(sm.params.train)
    if sm.input.tuned:  # tune.enabled: this loss's settings chosen on validation cells
        settings, train = apply_best(settings, train, yaml.safe_load(open(sm.input.tuned)))
    model = Autoencoder(
        adata,
        sm.wildcards.loss,
        sm.params.loss_params,
        hidden=tuple(settings.pop("hidden")),
        **settings,
    )
    job = {key: train.pop(key) for key in JOB_SETTINGS}
    log.info(
        "training %s at rank %s, seed %s, with %d threads: %s",
        sm.wildcards.loss,
        sm.wildcards.rank,
        sm.wildcards.seed,
        sm.threads,
        train,
    )
    model.train(
        **train,
        seed=int(sm.wildcards.seed),
        device=job["device"],
        checkpoint=sm.params.checkpoint,
        checkpoint_interval=job["checkpoint_interval"],
        resume_from=sm.input.tuned_run or None,  # the winning tuning trial, when it is this run
    )
    write_trained_model(
        model,
        Path(sm.output.model).parent,
        sm.output.embedding,
        sm.output.reconstruction,
        tuned=bool(sm.input.tuned),
    )
    Path(sm.params.checkpoint).unlink(missing_ok=True)
