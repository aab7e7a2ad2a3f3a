"""Snakemake entry point: train one autoencoder for a dataset × rank × loss × seed through the
public API (scae.Autoencoder), then write its embedding of every cell, its reconstructions of
the test cells and its scores on the training cells."""

from pathlib import Path

import anndata as ad
import numpy as np
import torch
import yaml

from scae import Autoencoder
from scae.evaluation.metrics import training_scores
from scae.io import rule_logging
from scae.outputs import write_run_outputs
from scae.train import keep_freed_memory
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
    train.pop("threads")
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
        checkpoint=sm.params.checkpoint,
        resume_from=sm.input.tuned_run or None,  # the winning tuning trial, when it is this run
    )
    model.save(Path(sm.output.model).parent, overwrite=True)  # model.pt and history.tsv
    split = adata.obs["split"].to_numpy()
    fitted = training_scores(
        adata.X,
        lambda rows: model.get_reconstruction(indices=rows),
        np.flatnonzero(split == "train"),
        adata.var["train_mean"].to_numpy(),
        adata.var["train_std"].to_numpy(),
    )
    test_rows = np.flatnonzero(split == "test")
    # Test cells are read only now: training and model selection never saw them.
    write_run_outputs(
        adata,
        test_rows,
        model.get_latent_representation(),
        model.get_reconstruction(indices=test_rows),
        sm.output.embedding,
        sm.output.reconstruction,
        {
            "model": sm.wildcards.loss,
            "seed": int(sm.wildcards.seed),
            "best_epoch": model.best_epoch,
            "stopped_by": model.stopped_by,
            **model.settings,
            "tuned": bool(sm.input.tuned),
            "train_scores": fitted,
        },
    )
    Path(sm.params.checkpoint).unlink(missing_ok=True)
