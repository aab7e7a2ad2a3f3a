"""What the workflow's training jobs share before they train: their inputs, read and set up."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import torch
import yaml

from .model import Autoencoder
from .train import keep_freed_memory
from .train.trainer import JOB_SETTINGS
from .train.tune import apply_best


def prepare_training(
    data_path: str | Path,
    label_key: str,
    model: dict,
    train: dict,
    tuned_path: str | Path | None,
    threads: int,
) -> tuple[ad.AnnData, dict, dict, dict]:
    """Set up a training job's process and read what it trains on.

    Sets torch's threads and the allocator (:func:`scae.train.keep_freed_memory`), reads the
    preprocessed AnnData at ``data_path`` and registers it (``label_key`` when ``obs`` has it),
    and applies the loss's tuned settings (``best.yaml`` at ``tuned_path``, when tuning ran)
    over the ``model`` and ``train`` config sections.

    Returns the AnnData, the model settings, the optimisation settings (what
    :meth:`scae.Autoencoder.train` takes) and the job settings (``JOB_SETTINGS``: threads,
    device, checkpoint interval, how models group into jobs).
    """
    torch.set_num_threads(threads)
    keep_freed_memory()  # minibatch buffers reused, not page-faulted in every step
    adata = ad.read_h5ad(data_path)
    labels = label_key if label_key in adata.obs else None
    Autoencoder.setup_anndata(adata, layer="counts", labels_key=labels)
    settings, train = dict(model), dict(train)
    if tuned_path:  # tune.enabled: this loss's settings chosen on validation cells
        settings, train = apply_best(settings, train, yaml.safe_load(Path(tuned_path).read_text()))
    job = {key: train.pop(key) for key in JOB_SETTINGS}
    return adata, settings, train, job
