"""Running a trained model over cells: validation scores, embeddings, reconstructions, model files.

Everything here reads a trained :class:`~scae.module.network.AutoencoderModule` rather than
training it: :func:`evaluate_split` scores validation cells (the fit loop calls it after every
epoch), :func:`latent_representation` and :func:`reconstruction` run the model over cells in
chunks of :data:`EVAL_CHUNK`, and :func:`save_model` / :func:`load_model` write and read the
model file. :class:`FitResult`, what :func:`scae.train.trainer.fit` returns, lives here because
:func:`save_model` writes it and the trainer imports this module, not the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ..io import atomic_path
from ..module.batch import Batch, DecoderOutput
from ..module.losses import LossSpec, cosine_similarity
from ..module.network import AutoencoderModule, ModelParams
from .cells import NEGATIVES, CellData, _epoch_seed, _to_device

#: Cells per chunk at inference: bounds the dense memory of validation and embedding.
EVAL_CHUNK = 2048


@dataclass
class FitResult:
    """What :func:`scae.train.fit` returns: the trained module, its history and how it stopped.

    ``model`` holds the best epoch's weights, ``history`` one row per epoch, ``best_epoch`` the
    epoch whose weights were kept.
    """

    model: AutoencoderModule
    history: pd.DataFrame
    best_epoch: int
    #: ``"patience"`` (early stopping fired) or ``"max_epochs"`` (the epoch cap was reached).
    stopped_by: Literal["patience", "max_epochs"] = "patience"


def evaluate_split(
    model: AutoencoderModule,
    data: CellData,
    spec: LossSpec,
    loss_params: dict,
    rows: np.ndarray,
    device: torch.device,
    seed: int,
) -> dict[str, float]:
    """Compute mean scores over ``rows``, in eval mode.

    The scores are ``val_loss`` (the training loss) and, in the common space with x̂ the
    reconstruction, x the truth and m̄ the training-mean profile, ``val_cosine`` cos(x̂, x),
    ``val_centred_cosine`` cos(x̂ − m̄, x − m̄) and ``val_mse`` mean_g (x̂_g − x_g)²: the scores a
    tuning criterion can compare across losses.
    """
    model.eval()
    generator = torch.Generator().manual_seed(_epoch_seed(seed, 0, NEGATIVES))
    sums = dict.fromkeys(VALIDATION_SCORES, 0.0)
    with torch.no_grad():
        for start in range(0, len(rows), EVAL_CHUNK):
            idx = rows[start : start + EVAL_CHUNK]
            inputs, batch, library = data.batch(idx, spec.uses_counts)
            batch = _to_device(batch, device)
            batch.generator = generator
            out = model(inputs.to(device), library.to(device))
            add_validation_sums(sums, out, batch, idx, data, spec, loss_params)
    return {name: total / len(rows) for name, total in sums.items()}


#: The scores :func:`evaluate_split` returns, means over the validation cells.
VALIDATION_SCORES = ("val_loss", "val_cosine", "val_centred_cosine", "val_mse")


def add_validation_sums(
    sums: dict[str, float],
    out: DecoderOutput,
    batch: Batch,
    idx: np.ndarray,
    data: CellData,
    spec: LossSpec,
    loss_params: dict,
) -> None:
    """Add one chunk's sums of the :data:`VALIDATION_SCORES` over its cells ``idx`` to ``sums``."""
    centre = data.mean.to(batch.x.device)
    sums["val_loss"] += float(spec.fn(out, batch, loss_params).sum())
    recon = data.to_expression(out, idx)
    truth = data.unscale(batch.x)
    sums["val_cosine"] += float(cosine_similarity(recon, truth).sum())
    sums["val_centred_cosine"] += float(cosine_similarity(recon - centre, truth - centre).sum())
    sums["val_mse"] += float(((recon - truth) ** 2).mean(dim=1).sum())


def save_model(path: Path, result: FitResult, meta: dict) -> None:
    """Write state dict + the exact settings used (loadable with ``weights_only=True``)."""
    with atomic_path(path) as tmp:
        torch.save(
            {
                "state_dict": result.model.state_dict(),
                "model_params": result.model.params.to_dict(),
                "best_epoch": result.best_epoch,
                **meta,
            },
            tmp,
        )


def load_model(path: Path, device: torch.device) -> tuple[AutoencoderModule, dict]:
    """Load a model :func:`save_model` wrote onto ``device``, in eval mode.

    Return the module and the saved dictionary (its settings and metadata).
    """
    saved = torch.load(path, map_location=device, weights_only=True)
    model = AutoencoderModule(ModelParams.from_dict(saved["model_params"])).to(device)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, saved


@torch.no_grad()
def latent_representation(
    model: AutoencoderModule, data: CellData, rows: np.ndarray, device: torch.device
) -> np.ndarray:
    """Latent z of ``rows`` (float32, rows × latent_dim), in chunks of ``EVAL_CHUNK`` cells."""
    model.eval()
    latent = np.empty((len(rows), model.params.latent_dim), dtype=np.float32)
    for start in range(0, len(rows), EVAL_CHUNK):
        idx = rows[start : start + EVAL_CHUNK]
        inputs, _, _ = data.batch(idx, with_counts=False)
        latent[start : start + len(idx)] = model.encode(inputs.to(device)).cpu().numpy()
    return latent


@torch.no_grad()
def reconstruction(
    model: AutoencoderModule,
    data: CellData,
    rows: np.ndarray,
    device: torch.device,
    counts: bool = False,
) -> np.ndarray:
    """Reconstruct ``rows``.

    Reconstructions are in the common space log1p(normalized expression) or, with ``counts``, as
    expected counts E[c] = (exp(x̂) − 1)·ℓ / target_sum (for count models exactly their predicted
    mean, μ or (1 − π)·μ, up to rounding).
    """
    model.eval()
    recon = np.empty((len(rows), data.n_genes), dtype=np.float32)
    for start in range(0, len(rows), EVAL_CHUNK):
        idx = rows[start : start + EVAL_CHUNK]
        inputs, _, library = data.batch(idx, with_counts=False)
        expression = data.to_expression(model(inputs.to(device), library.to(device)), idx)
        if counts:
            scale = torch.from_numpy(data.library_size[idx] / data.target_sum).to(device)
            expression = torch.expm1(expression) * scale[:, None]
        recon[start : start + len(idx)] = expression.cpu().numpy()
    return recon
