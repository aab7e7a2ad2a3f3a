"""AnnData outputs of one run: the embedding of every cell and test reconstructions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np

from .evaluation.metrics import training_scores
from .io import atomic_path
from .layout import parse

if TYPE_CHECKING:
    from .model import Autoencoder

#: obsm key of a run's latent embedding (absent for runs without one, e.g. the mean baseline).
EMBEDDING_KEY = "X_scae"


#: Metric-name prefix of the settings a run trained with (numbers, so they sit in metrics.tsv).
SETTING_PREFIX = "setting_"
#: The settings a training job records, in the order tables show them.
RUN_SETTINGS = ("learning_rate", "weight_decay", "batch_size", "dropout", "hidden", "tuned")
#: The training recipes a run records when on (scae.train.recipes; absent: off).
RECIPE_SETTINGS = ("ema_decay", "count_thinning", "input_masking", "pca_path")


def settings_metrics(meta: dict) -> dict[str, float]:
    """Return the ``setting_*`` metrics of a run's recorded settings.

    ``meta`` is ``uns['scae_run']`` of the run's embedding. One value per scalar setting,
    ``setting_hidden_1``, ``_2``, … per hidden layer width, and ``setting_tuned`` 1 when
    tune.enabled chose them on validation cells; the recipes' settings only where on.
    """
    values = {}
    for name in RUN_SETTINGS + RECIPE_SETTINGS:
        if name not in meta or (name in RECIPE_SETTINGS and not meta[name]):
            continue
        if name == "hidden":
            for layer, width in enumerate(np.atleast_1d(meta[name]), start=1):
                values[f"{SETTING_PREFIX}hidden_{layer}"] = float(width)
        else:
            values[f"{SETTING_PREFIX}{name}"] = float(meta[name])
    return values


def run_label(path: str | Path) -> str:
    """Return the run a results file belongs to, as tables and figures name it.

    ``nb`` for …/k32/embeddings/nb/seed0.h5ad, ``baseline_pca`` for …/baseline/pca.<ext>.
    """
    return parse(path).label


def write_run_outputs(
    adata: ad.AnnData,
    test_rows: np.ndarray,
    latent: np.ndarray | None,
    recon: np.ndarray,
    embedding_path: str,
    reconstruction_path: str,
    meta: dict,
) -> None:
    """Write ``obsm['X_scae']`` for all cells and a test-cells × genes reconstruction.

    The reconstruction's ``X`` is in the common space log1p(normalized expression), so every
    model and baseline is scored against the same truth (``adata.X`` of the test cells).
    """
    embedding = ad.AnnData(obs=adata.obs.copy(), uns={"scae_run": meta})
    if latent is not None:
        embedding.obsm[EMBEDDING_KEY] = np.asarray(latent, dtype=np.float32)
    reconstruction = ad.AnnData(
        X=np.ascontiguousarray(recon, dtype=np.float32),
        obs=adata.obs.iloc[test_rows].copy(),
        var=adata.var[[]].copy(),
        uns={"scae_run": meta},
    )
    with atomic_path(embedding_path) as tmp:
        embedding.write_h5ad(tmp)
    with atomic_path(reconstruction_path) as tmp:
        reconstruction.write_h5ad(tmp)


def write_scored_run(
    adata: ad.AnnData,
    latent: np.ndarray | None,
    reconstruct: Callable[[np.ndarray], np.ndarray],
    embedding_path: str,
    reconstruction_path: str,
    meta: dict,
) -> None:
    """Write a run's outputs (:func:`write_run_outputs`) with its scores on the training cells.

    ``reconstruct(rows)`` reconstructs cells of ``adata`` by row; the training cells' scores
    (the other side of the run's generalization gap) go to ``meta["train_scores"]``. Test cells
    are read only here: training and model selection never saw them.
    """
    split = adata.obs["split"].to_numpy()
    fitted = training_scores(
        adata.X,
        reconstruct,
        np.flatnonzero(split == "train"),
        adata.var["train_mean"].to_numpy(),
        adata.var["train_std"].to_numpy(),
    )
    test_rows = np.flatnonzero(split == "test")
    write_run_outputs(
        adata,
        test_rows,
        latent,
        reconstruct(test_rows),
        embedding_path,
        reconstruction_path,
        {**meta, "train_scores": fitted},
    )


def write_trained_model(
    model: Autoencoder,
    model_dir: str | Path,
    embedding_path: str,
    reconstruction_path: str,
    tuned: bool,
) -> None:
    """Write what a training job leaves of one trained ``model`` of the workflow.

    The model files in ``model_dir`` (``model.pt``, ``history.tsv``), then
    :func:`write_scored_run`'s outputs with the run's settings and how it stopped.
    """
    model.save(model_dir, overwrite=True)
    write_scored_run(
        model.adata,
        model.get_latent_representation(),
        lambda rows: model.get_reconstruction(indices=rows),
        embedding_path,
        reconstruction_path,
        {
            "model": model.loss.name,
            "seed": model.seed,
            "best_epoch": model.best_epoch,
            "stopped_by": model.stopped_by,
            **model.settings,
            "tuned": tuned,
        },
    )
