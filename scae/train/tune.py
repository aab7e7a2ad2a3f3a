"""Per-loss hyperparameter search on validation cells.

The search uses Optuna's TPE sampler and an end-point pruner.

Every loss of a dataset gets the same budget: ``n_trials`` trainings, each capped at
``max_epochs`` and early-stopped like the final runs, trained on the ``train`` cells and scored
on the ``val`` cells. Test cells are never read. Trial 0 is the configured ``model``/``train``
point (when the space contains it), so tuning can only match or beat the untuned settings on
validation cells. Trials run in one process (no start-up cost per trial); the sampler is seeded
and the pruner deterministic, so the same config gives the same trials.

Pruning (``tune.pruner``) judges where a trial would end, not how fast it starts. A trial
reports, after every epoch e, its score at the epoch early stopping would keep so far (a
best-so-far score, which after the trial ends stays its end-point score). ``endpoint``
(:class:`EndpointPruner`): no trial is judged before the warm-up, the best epoch of the first
completed trial (where runs of this loss typically reach their best; unknown, so nothing is
pruned, until one has completed); from then on a trial is stopped after epoch e when its score
is worse than the median, over the earlier completed or pruned trials, of each one's score by
epoch e (its end-point score if it ended before e). ``median`` is Optuna's MedianPruner as
before (after 3 completed trials, from epoch 5, against the trials that ran to epoch e): at
epoch 5 a low learning rate or a large batch is always behind, so it selects fast starters.
``none`` prunes nothing.

Optuna rather than a grid (Snakemake's ``Paramspace``): five dimensions at a budget of a few
trials per loss leave a grid one or two values per axis, and a grid job per point would pay
the ~4 s start-up of a training job each time.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ..evaluation.metrics import TUNING_CRITERIA
from ..module.losses import LossSpec
from ..module.network import ModelParams
from .cells import CellData, resolve_device
from .trainer import TrainingDiverged, TrainParams, fit

if TYPE_CHECKING:
    from ..model.autoencoder import Autoencoder

logger = logging.getLogger("scae")

Criterion = Literal["own_loss", "val_mse", "val_centred_cosine"]
#: History column each criterion reads, and whether larger is better.
CRITERIA = TUNING_CRITERIA
#: Settings a trial chooses: where each lives in the config.
TUNED = {
    "learning_rate": "train",
    "weight_decay": "train",
    "batch_size": "train",
    "dropout": "model",
    "hidden": "model",
}
Pruner = Literal["endpoint", "median", "none"]
#: ``tune.pruner: median``, the pruner tuning had before ``endpoint``: Optuna's MedianPruner
#: after this many completed trials, from this epoch on.
MEDIAN_STARTUP, MEDIAN_WARMUP = 3, 5


def _value_by(trial: FrozenTrial, epoch: int) -> float | None:
    """Return the score ``trial`` had reached by ``epoch``.

    This is its report at the latest epoch <= ``epoch`` (reports are best-so-far, so after its
    last one this is its end-point score).
    """
    steps = [step for step in trial.intermediate_values if step <= epoch]
    return trial.intermediate_values[max(steps)] if steps else None


def _best_step(values: dict[int, float]) -> int:
    """Return the epoch a best-so-far series reached its final value.

    This is the epoch early stopping keeps.
    """
    steps = sorted(values)
    best = steps[-1]
    for step in reversed(steps[:-1]):
        if values[step] != values[best]:
            break
        best = step
    return best


class EndpointPruner(optuna.pruners.BasePruner):
    """Stops a trial only when it is behind where earlier trials ended up by the same epoch.

    Trials report best-so-far scores, one per epoch (step). The warm-up is the epoch at which
    the first completed trial (lowest number) reached its best, times ``warmup_factor``
    (rounded, at least 1); until a trial has completed it is unknown and nothing is pruned,
    and no trial is judged at an epoch before it. At epoch e >= warm-up a trial is pruned when
    its score at e is worse (by the study's direction) than the median of the scores the
    earlier completed or pruned trials had reached by e, a trial that ended before e counting
    with its last (end-point) score. Deterministic: it reads the study's trials only.
    """

    def __init__(self, warmup_factor: float = 1.0) -> None:
        if warmup_factor <= 0:
            raise ValueError(f"warmup_factor must be positive, got {warmup_factor}")
        self.warmup_factor = warmup_factor

    def warmup(self, study: optuna.Study) -> int | None:
        """Return the first epoch at which trials are judged.

        None while no trial has completed.
        """
        complete = [
            trial
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if trial.intermediate_values
        ]
        if not complete:
            return None
        first = min(complete, key=lambda trial: trial.number)
        return max(1, round(_best_step(first.intermediate_values) * self.warmup_factor))

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Return whether to prune ``trial`` at its last reported epoch.

        Compare its score there with the median of the scores the earlier completed or pruned
        trials had reached by that epoch; nothing is pruned before the warm-up epoch.
        """
        epoch, warmup = trial.last_step, self.warmup(study)
        if epoch is None or warmup is None or epoch < warmup:
            return False
        earlier = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        reached = [
            value
            for other in earlier
            if other.number < trial.number and (value := _value_by(other, epoch)) is not None
        ]
        if not reached:
            return False
        median, score = float(np.median(reached)), trial.intermediate_values[epoch]
        if study.direction == StudyDirection.MAXIMIZE:
            return score < median
        return score > median


def _pruner(name: Pruner) -> tuple[optuna.pruners.BasePruner, Callable[[optuna.Study], int | None]]:
    """Return ``tune.pruner``'s pruner and its warm-up function.

    The function gives the warm-up epoch the pruner has in force for the next trial (None: it
    prunes no epoch of that trial).
    """
    if name == "endpoint":
        pruner = EndpointPruner()
        return pruner, pruner.warmup
    if name == "median":

        def median_warmup(study: optuna.Study) -> int | None:
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            return MEDIAN_WARMUP if len(complete) >= MEDIAN_STARTUP else None

        return (
            optuna.pruners.MedianPruner(
                n_startup_trials=MEDIAN_STARTUP, n_warmup_steps=MEDIAN_WARMUP
            ),
            median_warmup,
        )
    return optuna.pruners.NopPruner(), lambda study: None


@dataclass(frozen=True)
class SearchSpace:
    """The hyperparameter search space of a tuning study.

    Learning rate log-uniform in [low, high], dropout uniform in [low, high], the rest
    chosen among the listed values. ``latent_dim`` is not searched: it is PCA's rank.
    """

    learning_rate: tuple[float, float] = (3e-4, 3e-3)
    dropout: tuple[float, float] = (0.0, 0.3)
    weight_decay: tuple[float, ...] = (0.0, 1e-6, 1e-4)
    batch_size: tuple[int, ...] = (128, 256, 512)
    hidden: tuple[tuple[int, ...], ...] = ((256, 128), (512, 256), (128,))

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
    """The tuning budget and criterion, mirroring ``config['tune']``."""

    n_trials: int = 4
    #: A cap, not a target: trials stop by ``train.patience`` or pruning well before it.
    max_epochs: int = 300
    seed: int = 0
    criterion: Criterion = "own_loss"
    space: SearchSpace = field(default_factory=SearchSpace)
    pruner: Pruner = "endpoint"

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
) -> tuple[pd.DataFrame, dict]:
    """Search ``params.space`` for ``model``'s loss and architecture.

    Return (every trial, the best trial's settings as ``best.yaml`` holds them).

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
    )
    study.optimize(objective, n_trials=params.n_trials, catch=(TrainingDiverged,))
    trials = _trial_table(study, objective.outcomes)
    _log_stops(trials, params.pruner, params.max_epochs, train_params.patience)
    settings = _best_settings(study, spec.name, params.criterion, len(trials))
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
    outcomes: dict[int, dict] = field(default_factory=dict)

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
