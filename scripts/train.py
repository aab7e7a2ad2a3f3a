"""Snakemake entry point: train one autoencoder for a dataset × rank × loss × seed through the
public API (scae.Autoencoder), then write its model files, its embedding of every cell, its
reconstructions of the test cells and its scores on the training cells."""

from pathlib import Path

from scae import Autoencoder
from scae.io import rule_logging
from scae.jobs import prepare_training
from scae.outputs import write_trained_model

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]) as log:
    adata, settings, train, job = prepare_training(
        sm.input.data,
        sm.params.label_key,
        sm.params.model,
        sm.params.train,
        sm.input.tuned,
        sm.threads,
    )
    model = Autoencoder(
        adata,
        sm.wildcards.loss,
        sm.params.loss_params,
        hidden=tuple(settings.pop("hidden")),
        **settings,
    )
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
