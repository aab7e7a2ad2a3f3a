"""Snakemake entry point: train one loss's autoencoders at every rank for one dataset × seed
in one process, as one stacked model (scae.Autoencoder.train_stacked), then write each model's
files, embedding, test-cell reconstructions and training-cell scores where a one-model job
would have written them."""

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
    hidden = tuple(settings.pop("hidden"))
    settings.pop("latent_dim")
    models = {
        rank: Autoencoder(
            adata, sm.wildcards.loss, sm.params.loss_params, hidden=hidden, latent_dim=rank,
            **settings,
        )
        for rank in sm.params.ranks
    }  # fmt: skip
    seed, checkpoint = int(sm.wildcards.seed), Path(sm.params.checkpoint)
    log.info(
        "training %s at ranks %s, seed %s, with %d threads: %s",
        sm.wildcards.loss,
        list(models),
        seed,
        sm.threads,
        train,
    )
    stacked = dict(models)
    if sm.input.tuned_run:  # the winning tuning trial is this seed's run at the reference rank
        stacked.pop(sm.params.reference_rank).train(
            **train,
            seed=seed,
            device=job["device"],
            checkpoint=checkpoint.with_suffix(".tuned.pt"),
            checkpoint_interval=job["checkpoint_interval"],
            resume_from=sm.input.tuned_run,
        )
    if stacked:
        Autoencoder.train_stacked(
            list(stacked.values()),
            seeds=seed,
            device=job["device"],
            stack_size=job["stack_size"],
            checkpoint=checkpoint,
            checkpoint_interval=job["checkpoint_interval"],
            **train,
        )
    for rank, model_file, embedding, reconstruction in zip(
        models, sm.output.model, sm.output.embedding, sm.output.reconstruction
    ):
        write_trained_model(
            models[rank],
            Path(model_file).parent,
            embedding,
            reconstruction,
            tuned=bool(sm.input.tuned),
        )
    for stale in [checkpoint, *checkpoint.parent.glob(f"{checkpoint.stem}.*.pt")]:
        stale.unlink(missing_ok=True)
