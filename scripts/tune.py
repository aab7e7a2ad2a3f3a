"""Snakemake entry point: tune one loss's settings on a dataset's validation cells."""

import anndata as ad
import torch
import yaml

from scae import Autoencoder
from scae.io import atomic_path, rule_logging
from scae.train import keep_freed_memory
from scae.train.trainer import JOB_SETTINGS, TrainParams
from scae.train.tune import TuneParams, tune

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    torch.set_num_threads(sm.threads)
    keep_freed_memory()
    adata = ad.read_h5ad(sm.input[0])
    label_key = sm.params.label_key if sm.params.label_key in adata.obs else None
    Autoencoder.setup_anndata(adata, layer="counts", labels_key=label_key)
    settings = dict(sm.params.model)
    model = Autoencoder(
        adata,
        sm.wildcards.loss,
        sm.params.loss_params,
        hidden=tuple(settings.pop("hidden")),
        **settings,
    )
    train = {k: v for k, v in sm.params.train.items() if k not in JOB_SETTINGS}
    trials, best = tune(
        model,
        TrainParams(**train),
        TuneParams.from_config(sm.params.tune),
        device=sm.params.train["device"],
        best_run=sm.output.best_run,
    )
    with atomic_path(sm.output.trials) as tmp:
        trials.to_csv(tmp, sep="\t", index=False)
    with atomic_path(sm.output.best) as tmp:
        tmp.write_text(yaml.safe_dump(best, sort_keys=False))
