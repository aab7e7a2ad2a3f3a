"""Minibatch training with early stopping and resumable checkpoints.

Randomness is derived from (seed, epoch) alone – the shuffling order, dropout masks and
negative pairs of epoch e – so a run resumed from the checkpoint of epoch e−1 is bitwise
identical to one that was never interrupted. Running the trained model over cells (validation
scores, embeddings, reconstructions, model files) is :mod:`scae.train.inference`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch.profiler import record_function

from .. import _schema
from ..config import check_number
from ..io import atomic_path
from ..module.losses import LossSpec
from ..module.network import AutoencoderModule, ModelParams
from .cells import (
    CORRUPTION,
    DROPOUT,
    NEGATIVES,
    SHUFFLE,
    CellData,
    _epoch_seed,
    _minibatches,
    _to_device,
)
from .inference import FitResult, evaluate_split
from .optim import adam, set_learning_rate
from .recipes import WeightAverage, corrupt_inputs, floating_state, pca_path

logger = logging.getLogger("scae")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


#: config/schema.yaml's train defaults (threads and device among them: the job's, not read here).
_DEFAULTS = _schema.defaults("train")
#: Settings of ``config['train']`` that say how a job runs, not what it computes: outside
#: :class:`TrainParams`, and so outside a checkpoint's fingerprint.
JOB_SETTINGS = ("threads", "device", "checkpoint_interval", "models_per_job", "stack_size")
#: Seconds between a running job's checkpoints (config/schema.yaml's train.checkpoint_interval).
CHECKPOINT_INTERVAL: float = _DEFAULTS["checkpoint_interval"]


@dataclass(frozen=True)
class TrainParams:
    """Optimisation settings, mirroring ``config['train']`` (defaults from its schema)."""

    batch_size: int = _DEFAULTS["batch_size"]
    learning_rate: float = _DEFAULTS["learning_rate"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    max_epochs: int = _DEFAULTS["max_epochs"]
    patience: int = _DEFAULTS["patience"]
    #: Reduce-on-plateau: after every ``lr_patience`` epochs without a new best validation
    #: loss the learning rate is multiplied by ``lr_factor`` (0 switches it off).
    lr_patience: int = _DEFAULTS["lr_patience"]
    lr_factor: float = _DEFAULTS["lr_factor"]
    #: The recipes of :mod:`scae.train.recipes` (0 switches each off): weight averaging,
    #: binomial thinning of the input counts, masking noise on the input.
    ema_decay: float = _DEFAULTS["ema_decay"]
    count_thinning: float = _DEFAULTS["count_thinning"]
    input_masking: float = _DEFAULTS["input_masking"]

    @property
    def corrupts_inputs(self) -> bool:
        """Whether training inputs are corrupted (thinned or masked) before the forward."""
        return bool(self.count_thinning or self.input_masking)

    #: Each setting's limits as ``config/schema.yaml``'s train section states them: the API
    #: refuses what the workflow refuses.
    LIMITS: ClassVar[dict[str, dict[str, float]]] = {
        key: bounds for key, bounds in _schema.limits("train").items() if key not in JOB_SETTINGS
    }

    def __post_init__(self):
        """Check every setting against :attr:`LIMITS`; raise InputError when one is outside."""
        for f in fields(self):
            check_number(
                f"train.{f.name}",
                getattr(self, f.name),
                self.LIMITS[f.name],
                integer=isinstance(f.default, int),
            )


def fingerprint(*parts: dict) -> str:
    """Return a short hash of the settings a checkpoint belongs to."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_key(
    data: CellData,
    spec: LossSpec,
    loss_params: dict,
    model_params: ModelParams,
    train_params: TrainParams,
    seed: int,
    optimizer,
) -> str:
    """Return the fingerprint of one run: its cells, loss, settings, seed and optimiser kind."""
    return fingerprint(
        asdict(train_params),
        model_params.to_dict(),
        loss_params,
        {
            "loss": spec.name,
            "seed": seed,
            "cells": data.digest,
            "scaling": data.input_scaling,
            "optimizer": type(optimizer).__name__,
        },
    )


def train_epoch(
    model: AutoencoderModule,
    optimizer,
    data: CellData,
    spec: LossSpec,
    loss_params: dict,
    train_rows: np.ndarray,
    train_params: TrainParams,
    seed: int,
    epoch: int,
    device: torch.device,
    average: WeightAverage | None = None,
) -> float:
    """Train one pass over ``train_rows`` in minibatches; return the mean training loss per cell.

    Order, dropout masks, negatives and input corruption (:mod:`scae.train.recipes`) are drawn
    from (seed, epoch); ``average``, when given, is updated after every step.

    The loss stays on the device until the epoch ends: its sum over minibatches is read once,
    so no step waits for the device (a NaN or infinite loss of any step makes the sum NaN or
    infinite, and the epoch then raises :class:`TrainingDiverged`). The sum is accumulated in
    float64 as Python floats were, so the history is unchanged by where it is summed.

    Each step's phases are labelled for ``torch.profiler`` (``scae.batch``, ``scae.forward``,
    ``scae.loss``, ``scae.backward``, ``scae.optimizer``; ``scae.sync`` the epoch's one host
    read), so ``bench/run.py --only profile`` can say where a step's time goes.
    """
    model.train()
    torch.manual_seed(_epoch_seed(seed, epoch, DROPOUT))
    rng = np.random.default_rng(_epoch_seed(seed, epoch, SHUFFLE))
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch, NEGATIVES))
    corruption = torch.Generator().manual_seed(_epoch_seed(seed, epoch, CORRUPTION))
    live = floating_state(model) if average is not None else None
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_seen = 0
    for idx in _minibatches(train_rows, train_params.batch_size, rng):
        with record_function("scae.batch"):
            inputs, batch, library = data.batch(idx, spec.uses_counts)
            if train_params.corrupts_inputs:  # the target (batch) stays whole
                inputs = corrupt_inputs(
                    inputs, data, idx, train_params.count_thinning,
                    train_params.input_masking, corruption,
                )  # fmt: skip
            batch = _to_device(batch, device)
            batch.generator = generator
            inputs, library = inputs.to(device), library.to(device)
        with record_function("scae.forward"):
            out = model(inputs, library)
        with record_function("scae.loss"):
            loss = spec.fn(out, batch, loss_params).mean()
        with record_function("scae.backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("scae.optimizer"):
            optimizer.step()
            if average is not None:
                average.update(live)
        loss_sum += loss.detach().double() * len(idx)
        n_seen += len(idx)
    with record_function("scae.sync"):
        train_loss = loss_sum.item() / n_seen
    if not math.isfinite(train_loss):
        raise TrainingDiverged(
            f"loss {spec.name} became {train_loss} in epoch {epoch}; lower "
            f"train.learning_rate (now {train_params.learning_rate}) in config/config.yaml or "
            "check the input for extreme values"
        )
    return train_loss


def fit(
    data: CellData,
    spec: LossSpec,
    loss_params: dict,
    model_params: ModelParams,
    train_params: TrainParams,
    seed: int,
    device: torch.device,
    checkpoint: Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    checkpoint_interval: float = CHECKPOINT_INTERVAL,
    resume_from: Path | None = None,
) -> FitResult:
    """Train on ``train`` cells, early-stop on ``val`` loss, return the best weights.

    Test cells are never touched. With ``checkpoint``, the training state is saved there
    (atomically) after the first epoch that ends ``checkpoint_interval`` seconds or more after
    the previous save (0: after every epoch) and after the last epoch, and an existing
    checkpoint of the same run is resumed. "The same run" is the same cells (a digest of
    ``data``), loss, settings and seed: the fingerprint of all of them is in the file. Failing
    that, ``resume_from`` is resumed when it holds the same run: a tuning trial's final state
    (:func:`scae.train.tune.tune`'s ``best_run``) is a finished run, so nothing is trained
    again. Randomness comes from (seed, epoch), so a resumed run is bitwise the uninterrupted
    one. ``on_epoch`` receives each epoch's history row (a tuner's pruner raises from it).
    """
    model = initial_module(data, model_params, seed, device)
    optimizer = adam(
        model.parameters(),
        device,
        lr=train_params.learning_rate,
        weight_decay=train_params.weight_decay,
    )
    key = run_key(data, spec, loss_params, model_params, train_params, seed, optimizer)
    state = None
    for source in (checkpoint, resume_from):
        if state is None and source is not None and source.exists():
            state = _resume(source, key, model, optimizer, device)
    state = state or _initial_state(train_params)
    average = _weight_average(state, train_params)

    rows = data.rows("train"), data.rows("val")
    saved_at = time.monotonic()
    while not _stopped(state, train_params):
        row = _epoch(
            model, optimizer, data, spec, loss_params, rows, train_params, seed, state, device,
            average,
        )  # fmt: skip
        state["history"].append(row)
        state["average"] = average.tensors if average is not None else None
        with _averaged(model, average):
            _select(state, row["epoch"], row["val_loss"], model.state_dict, optimizer, train_params)
        _log_epoch(row, best=state["best_epoch"] == row["epoch"])
        if on_epoch is not None:
            on_epoch(row)
        # Not after every epoch: a save (~17 MB on pbmc3k) costs a tenth of a short epoch.
        due = time.monotonic() - saved_at >= checkpoint_interval
        if checkpoint is not None and (due or _stopped(state, train_params)):
            _save_checkpoint(checkpoint, key, model, optimizer, state)
            saved_at = time.monotonic()
    return _finish(model, state, train_params)


def initial_module(
    data: CellData, model_params: ModelParams, seed: int, device: torch.device
) -> AutoencoderModule:
    """Return the module a run starts from: its seed's initial weights, the PCA path where on.

    The PCA path (``model_params.pca_path``) comes from ``data``'s training cells
    (:func:`scae.train.recipes.pca_path`) and draws no random numbers.
    """
    torch.manual_seed(seed)
    model = AutoencoderModule(model_params)
    if model_params.pca_path:
        counts_head = model_params.output != "expression"
        model.load_pca_path(pca_path(data, model_params.latent_dim, counts_head))
    return model.to(device)


def _weight_average(state: dict, train_params: TrainParams) -> WeightAverage | None:
    """Return the run's weight average (None when ``ema_decay`` is 0), resumed from ``state``."""
    if not train_params.ema_decay:
        return None
    average = WeightAverage(train_params.ema_decay)
    average.tensors = state.get("average")
    return average


def _averaged(model: AutoencoderModule, average: WeightAverage | None):
    """Within the block ``model`` holds the averaged weights (with averaging on)."""
    return average.applied(floating_state(model)) if average is not None else nullcontext()


def _stopped(state: dict, train_params: TrainParams) -> bool:
    """Whether training is over: the epoch cap reached or patience run out."""
    return state["epoch"] >= train_params.max_epochs or state["bad_epochs"] >= train_params.patience


def _initial_state(train_params: TrainParams) -> dict:
    """Return the training state before the first epoch (what a checkpoint saves and resumes)."""
    return {
        "epoch": 0,
        "best_val": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "best_model": None,
        "history": [],
        "lr": train_params.learning_rate,
        "average": None,
    }


def _epoch(
    model: AutoencoderModule,
    optimizer,
    data: CellData,
    spec: LossSpec,
    loss_params: dict,
    rows: tuple[np.ndarray, np.ndarray],
    train_params: TrainParams,
    seed: int,
    state: dict,
    device: torch.device,
    average: WeightAverage | None = None,
) -> dict:
    """Train the epoch after ``state["epoch"]`` and return its history row.

    The epoch trains on the training ``rows[0]`` and is scored on the validation ``rows[1]``
    (with the averaged weights when ``average`` is given).
    """
    epoch = state["epoch"] + 1
    started = time.perf_counter()
    train_loss = train_epoch(
        model, optimizer, data, spec, loss_params, rows[0], train_params, seed, epoch, device,
        average,
    )  # fmt: skip
    with _averaged(model, average):
        scores = evaluate_split(model, data, spec, loss_params, rows[1], device, seed)
    if not math.isfinite(scores["val_loss"]):
        raise TrainingDiverged(
            f"validation loss became {scores['val_loss']} in epoch {epoch}; lower "
            f"train.learning_rate (now {train_params.learning_rate})"
        )
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        **scores,
        "learning_rate": state["lr"],
        "seconds": time.perf_counter() - started,
    }


def _log_epoch(row: dict, best: bool) -> None:
    logger.info(
        "epoch %3d  train %.5f  val %.5f  val cosine %.4f  %.2fs%s",
        row["epoch"],
        row["train_loss"],
        row["val_loss"],
        row["val_cosine"],
        row["seconds"],
        "  *" if best else "",
    )


def _save_checkpoint(
    checkpoint: Path, key: str, model: AutoencoderModule, optimizer, state: dict
) -> None:
    """Write the state after an epoch atomically: a killed job leaves the previous one."""
    with atomic_path(checkpoint) as tmp:
        torch.save(
            {
                "fingerprint": key,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": state,
            },
            tmp,
        )


def _resume(
    checkpoint: Path, key: str, model: AutoencoderModule, optimizer, device: torch.device
) -> dict | None:
    """Resume from a checkpoint; return the training state after its last epoch.

    The state is loaded into ``model`` and ``optimizer`` when the checkpoint was written for the
    same run (``key``); otherwise nothing is loaded and None returned.
    """
    saved = torch.load(checkpoint, map_location=device, weights_only=True)
    if saved["fingerprint"] != key:
        logger.info("ignoring checkpoint %s written for other settings or cells", checkpoint)
        return None
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    set_learning_rate(optimizer, saved["state"]["lr"])
    logger.info("resumed from %s after epoch %d", checkpoint, saved["state"]["epoch"])
    return saved["state"]


def _select(
    state: dict,
    epoch: int,
    val_loss: float,
    weights: Callable[[], dict],
    optimizer,
    train_params: TrainParams,
) -> None:
    """Select the model after an epoch.

    A new best validation loss keeps a copy of the ``weights()`` state dict and
    resets the streak of bad epochs; otherwise the streak grows, and reduce-on-plateau
    multiplies the rate by ``lr_factor`` whenever it reaches a multiple of ``lr_patience``:
    torch's ``ReduceLROnPlateau`` (patience ``lr_patience`` − 1, no threshold, no cooldown; a
    test holds the two equal), written out because that scheduler accepts only a
    ``torch.optim`` optimizer, whose construction costs a job ~3 s that :class:`FusedAdam`
    does not.
    """
    if val_loss < state["best_val"]:
        state.update(
            best_val=val_loss,
            best_epoch=epoch,
            bad_epochs=0,
            best_model={k: v.detach().clone() for k, v in weights().items()},
        )
    else:
        state["bad_epochs"] += 1
        if train_params.lr_patience and state["bad_epochs"] % train_params.lr_patience == 0:
            state["lr"] *= train_params.lr_factor
            set_learning_rate(optimizer, state["lr"])
    state["epoch"] = epoch


def _finish(model: AutoencoderModule, state: dict, train_params: TrainParams) -> FitResult:
    """Load the best epoch's weights and report how training stopped.

    Warn when the validation loss was still improving.
    """
    model.load_state_dict(state["best_model"])
    stopped_by = "patience" if state["bad_epochs"] >= train_params.patience else "max_epochs"
    logger.info(
        "best epoch %d (val loss %.5f), stopped by %s",
        state["best_epoch"],
        state["best_val"],
        stopped_by,
    )
    if stopped_by == "max_epochs":  # then the best epoch is among the last `patience` ones
        logger.warning(
            "not converged: stopped at max_epochs=%d with the best epoch %d among the last "
            "patience=%d epochs; raise max_epochs",
            train_params.max_epochs,
            state["best_epoch"],
            train_params.patience,
        )
    return FitResult(
        model=model,
        history=pd.DataFrame(state["history"]),
        best_epoch=state["best_epoch"],
        stopped_by=stopped_by,
    )
