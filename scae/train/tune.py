"""Per-loss hyperparameter search on validation cells.

The search uses Optuna's TPE sampler and an end-point pruner (:mod:`scae.train.pruning`, which
says how ``tune.pruner`` judges a trial).

Every loss of a dataset gets the same budget: ``n_trials`` trainings, each capped at
``max_epochs`` and early-stopped like the final runs, trained on the ``train`` cells and scored
on the ``val`` cells. Test cells are never read. Trial 0 is the configured ``model``/``train``
point (when the space contains it), so tuning can only match or beat the untuned settings on
validation cells. Trials run in one process (no start-up cost per trial); the sampler is seeded
and the pruner deterministic, so the same config gives the same trials.

Optuna rather than a grid (Snakemake's ``Paramspace``): five dimensions at a budget of a few
trials per loss leave a grid one or two values per axis, and a grid job per point would pay
the ~4 s start-up of a training job each time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from .. import _schema
from ..evaluation.metrics import TUNING_CRITERIA
from ..io import atomic_path
from ..module.losses import LossSpec
from ..module.network import ModelParams
from .cells import CellData, resolve_device
from .pruning import Pruner, _pruner
from .trainer import TrainingDiverged, TrainParams, fit

if TYPE_CHECKING:
    from ..model.autoencoder import Autoencoder

logger = logging.getLogger("scae")

Criterion = Literal["own_loss", "val_mse", "val_centred_cosine"]
#: History column each criterion reads, and whether larger is better.
CRITERIA = TUNING_CRITERIA
#: config/schema.yaml's defaults of the tune section and of its search space.
_TUNE, _SPACE = _schema.defaults("tune"), _schema.defaults("tune", "space")
#: Settings a trial chooses: where each lives in the config.
TUNED = {
    "learning_rate": "train",
    "weight_decay": "train",
    "batch_size": "train",
    "dropout": "model",
    "hidden": "model",
}


@dataclass(frozen=True)
class SearchSpace:
    """The hyperparameter search space of a tuning study.

    Learning rate log-uniform in [low, high], dropout uniform in [low, high], the rest
    chosen among the listed values. ``latent_dim`` is not searched: it is PCA's rank.
    """

    learning_rate: tuple[float, float] = _SPACE["learning_rate"]
    dropout: tuple[float, float] = _SPACE["dropout"]
    weight_decay: tuple[float, ...] = _SPACE["weight_decay"]
    batch_size: tuple[int, ...] = _SPACE["batch_size"]
    hidden: tuple[tuple[int, ...], ...] = _SPACE["hidden"]

    @classmethod
    def from_config(cls, space: dict) -> SearchSpace:
        """Build the search space from ``config['tune']['space']``."""
        return cls(
            learning_rate=tuple(space["learning_rate"]),
            dropout=tuple(space["dropout"]),
            weight_decay=tuple(space["weight_decay"]),
            batch_size=tuple(space["batch_size"]),
            hidden=tuple(tuple(h) for h in space["hidden"]),
        )

    def contains(self, point: dict[str, Any]) -> bool:
        """Return whether the settings ``point`` lie within this space."""
        return (
            self.learning_rate[0] <= point["learning_rate"] <= self.learning_rate[1]
            and self.dropout[0] <= point["dropout"] <= self.dropout[1]
            and point["weight_decay"] in self.weight_decay
            and point["batch_size"] in self.batch_size
            and tuple(point["hidden"]) in self.hidden
        )


@dataclass(frozen=True)
class TuneParams:
    """The tuning budget and criterion, mirroring ``config['tune']`` (defaults from its schema)."""

    n_trials: int = _TUNE["n_trials"]
    #: A cap, not a target: trials stop by ``train.patience`` or pruning well before it.
    max_epochs: int = _TUNE["max_epochs"]
    seed: int = _TUNE["seed"]
    criterion: Criterion = _TUNE["criterion"]
    space: SearchSpace = field(default_factory=SearchSpace)
    pruner: Pruner = _TUNE["pruner"]

    @classmethod
    def from_config(cls, tune: dict) -> TuneParams:
        """From ``config['tune']`` (schema-validated, defaults filled)."""
        return cls(
            n_trials=tune["n_trials"],
            max_epochs=tune["max_epochs"],
            seed=tune["seed"],
            criterion=tune["criterion"],
            space=SearchSpace.from_config(tune["space"]),
            pruner=tune["pruner"],
        )


def _hidden_key(hidden: tuple[int, ...]) -> str:
    return ",".join(map(str, hidden))  # Optuna's categorical choices must be scalars


def tune(
    model: Autoencoder,
    train_params: TrainParams,
    params: TuneParams,
    device: str | torch.device = "auto",
    best_run: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Search ``params.space`` for ``model``'s loss and architecture.

    Return (every trial, the best trial's settings as ``best.yaml`` holds them). With
    ``best_run``, the best trial's final training state is written there as a checkpoint of
    :func:`scae.train.fit`: the final run with the best settings and seed ``params.seed``, at
    the same rank and ``max_epochs``, *is* that trial (same cells, settings and random
    streams), so it resumes the finished trial instead of training it again.

    ``model`` is an untrained :class:`scae.Autoencoder` (its AnnData, loss, loss parameters
    and the configured architecture). A trial trains from fresh weights with the sampled
    settings (``max_epochs = params.max_epochs``, the rest of ``train_params`` as given,
    training seed ``params.seed``) and scores the criterion at its best epoch (the epoch early
    stopping keeps, chosen by validation loss). TPE samples at random for its first 4 trials.
    After every epoch e a trial reports that best-so-far score; with ``params.pruner`` =
    ``endpoint`` it is stopped after epoch e when e >= the warm-up (the best epoch of the first
    completed trial; before one has completed nothing is pruned) and its score is worse than
    the median, over earlier completed or pruned trials, of each one's score by epoch e (its
    end-point score if it ended before e). ``median``: Optuna's MedianPruner (from epoch 5,
    after 3 completed trials, against the trials that ran to epoch e); ``none``: no pruning.
    A trial whose loss diverges is recorded as failed and the search goes on.

    The first frame has one row per trial: its settings, ``epochs`` run, ``best_epoch``,
    ``stopped_by`` (``patience``, ``max_epochs``, ``pruned`` or ``diverged``), ``score``,
    ``pruned_at`` (the epoch a pruned trial was stopped after), ``warmup`` (the warm-up in
    force for the trial; empty while none was) and ``converged`` (False when it stopped at
    ``params.max_epochs`` with its best epoch among the last ``patience``, i.e. still
    improving; empty for pruned and failed trials).
    """
    data, spec, loss_params = model.training_data(), model.loss, model.loss_params
    model_params = model.module_params
    study, warmup = _create_study(spec.name, params, train_params, model_params)
    # Trial states go to the job's temporary directory ($TMPDIR), not beside the outputs: a
    # killed job leaves nothing there.
    trial_states = (
        tempfile.TemporaryDirectory(prefix="scae-trials.")
        if best_run is not None
        else contextlib.nullcontext(None)
    )
    with trial_states as trial_dir:
        objective = _Objective(
            data,
            spec,
            loss_params,
            model_params,
            train_params,
            params,
            resolve_device(device),
            warmup,
            study,
            trial_dir=Path(trial_dir) if trial_dir is not None else None,
        )
        study.optimize(objective, n_trials=params.n_trials, catch=(TrainingDiverged,))
        trials = _trial_table(study, objective.outcomes)
        _log_stops(trials, params.pruner, params.max_epochs, train_params.patience)
        settings = _best_settings(study, spec.name, params.criterion, len(trials))
        if best_run is not None:  # a completed trial: fit saved its state after its last epoch
            with atomic_path(best_run) as tmp:
                shutil.copyfile(objective.state_path(study.best_trial.number), tmp)
    return trials, settings


def _best_settings(study: optuna.Study, loss: str, criterion: str, n_trials: int) -> dict:
    """Return the best trial's settings as ``best.yaml`` holds them (logged)."""
    best = study.best_trial
    chosen = {**best.params, "hidden": [int(w) for w in best.params["hidden"].split(",")]}
    logger.info(
        "best trial %d of %d: %s = %.5f with %s",
        best.number,
        n_trials,
        criterion,
        best.value,
        chosen,
    )
    return {
        "loss": loss,
        "criterion": criterion,
        "score": float(best.value),
        "trial": best.number,
        "n_trials": n_trials,
        "model": {name: chosen[name] for name, where in TUNED.items() if where == "model"},
        "train": {name: chosen[name] for name, where in TUNED.items() if where == "train"},
    }


def _create_study(
    loss: str, params: TuneParams, train_params: TrainParams, model_params: ModelParams
) -> tuple[optuna.Study, Callable[[optuna.Study], int | None]]:
    """Create the seeded study of one loss.

    The configured point is enqueued as trial 0 (when the space holds it). Return the study and
    the warm-up its pruner has in force for the next trial.
    """
    pruner, warmup = _pruner(params.pruner)
    # One seed per (tune seed, loss): losses get independent but reproducible samplers.
    sampler_seed = params.seed * 1_000_003 + zlib.crc32(loss.encode())
    study = optuna.create_study(
        direction="maximize" if CRITERIA[params.criterion][1] else "minimize",
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=4),
        pruner=pruner,
    )
    configured = {
        "learning_rate": train_params.learning_rate,
        "weight_decay": train_params.weight_decay,
        "batch_size": train_params.batch_size,
        "dropout": model_params.dropout,
        "hidden": model_params.hidden,
    }
    if params.space.contains(configured):
        study.enqueue_trial({**configured, "hidden": _hidden_key(model_params.hidden)})
    else:
        logger.info(
            "the configured settings %s lie outside tune.space: no trial starts there", configured
        )
    return study, warmup


def _sample(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample a trial's settings (in this order: TPE's draws depend on it)."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", *space.learning_rate, log=True),
        "weight_decay": trial.suggest_categorical("weight_decay", list(space.weight_decay)),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_size)),
        "dropout": trial.suggest_float("dropout", *space.dropout),
        "hidden": tuple(
            int(w)
            for w in trial.suggest_categorical(
                "hidden", [_hidden_key(h) for h in space.hidden]
            ).split(",")
        ),
    }


@dataclass
class _Objective:
    """The objective of a study: one trial.

    Train with the sampled settings, report the best-so-far criterion after
    every epoch (where the pruner may stop it), return the score at the kept epoch;
    ``outcomes`` collects how each trial ended, by trial number.
    """

    data: CellData
    spec: LossSpec
    loss_params: dict
    model_params: ModelParams
    train_params: TrainParams
    params: TuneParams
    device: torch.device
    warmup: Callable[[optuna.Study], int | None]
    study: optuna.Study
    #: Where each trial's final state is saved (None: nowhere).
    trial_dir: Path | None = None
    outcomes: dict[int, dict] = field(default_factory=dict)

    def state_path(self, number: int) -> Path | None:
        """Return where trial ``number`` saves its final state (None without a trial_dir)."""
        return self.trial_dir / f"trial{number}.pt" if self.trial_dir is not None else None

    def __call__(self, trial: optuna.Trial) -> float:
        chosen = _sample(trial, self.params.space)
        outcome = {
            "epochs": 0,
            "best_epoch": 0,
            "stopped_by": "diverged",  # unless fit returns
            "score": np.nan,
            "pruned_at": None,
            "warmup": self.warmup(self.study),
        }
        self.outcomes[trial.number] = outcome
        column = CRITERIA[self.params.criterion][0]
        best_val_loss = np.inf

        def report(row: dict) -> None:
            nonlocal best_val_loss
            outcome["epochs"] = row["epoch"]
            if row["val_loss"] < best_val_loss:  # the epoch early stopping would keep
                best_val_loss = row["val_loss"]
                outcome.update(best_epoch=row["epoch"], score=row[column])
            trial.report(outcome["score"], row["epoch"])
            if trial.should_prune():
                outcome.update(stopped_by="pruned", pruned_at=row["epoch"])
                raise optuna.TrialPruned()

        result = fit(
            self.data,
            self.spec,
            self.loss_params,
            replace(self.model_params, dropout=chosen["dropout"], hidden=chosen["hidden"]),
            replace(
                self.train_params,
                learning_rate=chosen["learning_rate"],
                weight_decay=chosen["weight_decay"],
                batch_size=chosen["batch_size"],
                max_epochs=self.params.max_epochs,
            ),
            seed=self.params.seed,
            device=self.device,
            on_epoch=report,
            checkpoint=self.state_path(trial.number),
            checkpoint_interval=math.inf,  # only the final state: a trial is not resumed
        )
        outcome["stopped_by"] = result.stopped_by
        return float(outcome["score"])


def _trial_table(study: optuna.Study, outcomes: dict[int, dict]) -> pd.DataFrame:
    """One row per trial: its settings and how it ended (:func:`tune`)."""
    rows = []
    for trial in study.trials:
        outcome = outcomes[trial.number]
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                **{name: trial.params[name] for name in TUNED},
                **outcome,
                # stopped_by is max_epochs exactly when the cap came within patience of the best
                "converged": (
                    outcome["stopped_by"] != "max_epochs"
                    if trial.state == TrialState.COMPLETE
                    else None
                ),
            }
        )
    return pd.DataFrame(rows).astype(
        {"pruned_at": "Int64", "warmup": "Int64", "converged": "boolean"}
    )


def _log_stops(trials: pd.DataFrame, pruner: Pruner, max_epochs: int, patience: int) -> None:
    """Log how the trials stopped.

    Report those pruned (at which epochs), and those at the cap while still improving (a
    warning: the cap, not the data, then ended a trial).
    """
    pruned = trials["pruned_at"].dropna().astype(int).tolist()
    capped = int(trials["converged"].eq(False).sum())
    logger.info(
        "pruner %s stopped %d of %d trials, after epochs %s; %d stopped at "
        "tune.max_epochs=%d still improving",
        pruner,
        len(pruned),
        len(trials),
        pruned,
        capped,
        max_epochs,
    )
    if capped:
        logger.warning(
            "%d trial(s) stopped at tune.max_epochs=%d with their best epoch among "
            "the last train.patience=%d: still improving; raise tune.max_epochs",
            capped,
            max_epochs,
            patience,
        )


def apply_best(model: dict, train: dict, best: dict) -> tuple[dict, dict]:
    """Return the ``model`` and ``train`` config sections with ``best.yaml``'s settings applied."""
    return {**model, **best["model"]}, {**train, **best["train"]}
