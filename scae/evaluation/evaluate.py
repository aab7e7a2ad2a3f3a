"""Score one run (an autoencoder or a baseline) on the held-out test cells."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd

from ..data.mcv import HELDOUT_LAYER
from ..outputs import EMBEDDING_KEY, settings_metrics
from .mcv import mcv_metrics
from .metrics import (
    EMBEDDING_DIM,
    breakdowns,
    count_nll,
    embedding_metrics,
    expected_counts,
    moment_dispersion,
    per_cell_metrics,
    summarize_reconstruction,
)


def evaluate_run(
    data: ad.AnnData, reconstruction: ad.AnnData, embedding: ad.AnnData, label_key: str | None
) -> tuple[dict[str, float], pd.DataFrame]:
    """All metrics of one run and its per-cell table.

    ``data`` is the preprocessed dataset, ``reconstruction`` the run's test cells × genes in
    the common space, ``embedding`` its cells with ``obsm['X_scae']`` (if it has one; its
    width is reported as ``embedding_dim``). Label metrics are judged on test cells
    (:func:`scae.evaluation.metrics.embedding_metrics`).
    """
    test = data[reconstruction.obs_names]
    is_train = (data.obs["split"] == "train").to_numpy()
    recon = np.asarray(reconstruction.X)
    truth = test.X
    target_sum = float(data.uns["scae"]["target_sum"])
    library = test.obs["library_size"].to_numpy(np.float64)

    per_cell = per_cell_metrics(
        truth, recon, data.var["train_mean"].to_numpy(), data.var["train_std"].to_numpy()
    )
    values = summarize_reconstruction(per_cell, truth, recon)
    values |= breakdowns(truth, recon, per_cell, data.var["train_mean"].to_numpy(), library)
    theta = moment_dispersion(data.layers["counts"][is_train])
    values |= count_nll(test.layers["counts"], expected_counts(recon, library, target_sum), theta)
    if HELDOUT_LAYER in data.layers:
        values |= mcv_metrics(
            test.layers[HELDOUT_LAYER],
            recon,
            library,
            test.obs["mcv_library_size"].to_numpy(np.float64),
            target_sum,
            moment_dispersion(data.layers[HELDOUT_LAYER][is_train]),
        )
    if EMBEDDING_KEY in embedding.obsm:
        values[EMBEDDING_DIM] = float(embedding.obsm[EMBEDDING_KEY].shape[1])
    meta = embedding.uns.get("scae_run", {})
    values |= settings_metrics(meta)
    values |= {name: float(value) for name, value in meta.get("train_scores", {}).items()}
    if EMBEDDING_KEY in embedding.obsm and label_key:
        if label_key in data.obs and data.obs[label_key].notna().any():
            values |= embedding_metrics(
                embedding.obsm[EMBEDDING_KEY], data.obs[label_key], data.obs["split"].to_numpy()
            )
        elif label_key not in data.obs:  # (a column without labels: preprocess warned)
            warnings.warn(
                f"label_key {label_key!r} is not a column of obs; label metrics skipped",
                stacklevel=2,
            )
    per_cell.insert(0, "cell", reconstruction.obs_names.to_numpy())
    per_cell["library_size"] = library
    return values, per_cell
