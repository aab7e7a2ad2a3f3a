"""Per-loss hyperparameter search on validation cells: Optuna's TPE sampler, median pruning.

Every loss of a dataset gets the same budget: ``n_trials`` trainings, each capped at
``max_epochs`` and early-stopped like the final runs, trained on the ``train`` cells and scored
on the ``val`` cells. Test cells are never read. Trial 0 is the configured ``model``/``train``
point (when the space contains it), so tuning can only match or beat the untuned settings on
validation cells. Trials run in one process (no start-up cost per trial); the sampler and the
pruner are seeded and see only completed trials, so the same config gives the same trials.

Optuna rather than a grid (Snakemake's ``Paramspace``): five dimensions at a budget of a few
trials per loss leave a grid one or two values per axis, and a grid job per point would pay
the ~4 s start-up of a training job each time.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch

from .train import TrainingDiverged, TrainParams, fit, resolve_device

if TYPE_CHECKING:
    from .autoencoder import Autoencoder

logger = logging.getLogger("scae")

Criterion = Literal["own_loss", "val_mse", "val_centred_cosine"]
#: History column each criterion reads, and whether larger is better.
CRITERIA: dict[str, tuple[str, bool]] = {
    "own_loss": ("val_loss", False),
    "val_mse": ("val_mse", False),
    "val_centred_cosine": ("val_centred_cosine", True),
}
#: Settings a trial chooses: where each lives in the config.
TUNED = {"learning_rate": "train", "weight_decay": "train", "batch_size": "train",
         "dropout": "model", "hidden": "model"}


@dataclass(frozen=True)
class SearchSpace:
    """Learning rate log-uniform in [low, high], dropout uniform in [low, high], the rest
    chosen among the listed values. ``latent_dim`` is not searched: it is PCA's rank."""

    learning_rate: tuple[float, float] = (3e-4, 3e-3)
    dropout: tuple[float, float] = (0.0, 0.3)
    weight_decay: tuple[float, ...] = (0.0, 1e-6, 1e-4)
    batch_size: tuple[int, ...] = (128, 256, 512)
    hidden: tuple[tuple[int, ...], ...] = ((256, 128), (512, 256), (128,))

    @classmethod
    def from_config(cls, space: dict) -> SearchSpace:
        return cls(learning_rate=tuple(space["learning_rate"]), dropout=tuple(space["dropout"]),
                   weight_decay=tuple(space["weight_decay"]),
                   batch_size=tuple(space["batch_size"]),
                   hidden=tuple(tuple(h) for h in space["hidden"]))

    def contains(self, point: dict[str, Any]) -> bool:
        return (self.learning_rate[0] <= point["learning_rate"] <= self.learning_rate[1]
                and self.dropout[0] <= point["dropout"] <= self.dropout[1]
                and point["weight_decay"] in self.weight_decay
                and point["batch_size"] in self.batch_size
                and tuple(point["hidden"]) in self.hidden)


@dataclass(frozen=True)
class TuneParams:
    """The tuning budget and criterion, mirroring ``config['tune']``."""

    n_trials: int = 4
    max_epochs: int = 30
    seed: int = 0
    criterion: Criterion = "own_loss"
    space: SearchSpace = field(default_factory=SearchSpace)

    @classmethod
    def from_config(cls, tune: dict) -> TuneParams:
        """From ``config['tune']`` (schema-validated, defaults filled)."""
        return cls(n_trials=tune["n_trials"], max_epochs=tune["max_epochs"], seed=tune["seed"],
                   criterion=tune["criterion"], space=SearchSpace.from_config(tune["space"]))


def _hidden_key(hidden: tuple[int, ...]) -> str:
    return ",".join(map(str, hidden))  # Optuna's categorical choices must be scalars


def tune(
    model: Autoencoder,
    train_params: TrainParams,
    params: TuneParams,
    device: str | torch.device = "auto",
) -> tuple[pd.DataFrame, dict]:
    """Search ``params.space`` for ``model``'s loss and architecture; return (every trial,
    the best trial's settings as ``best.yaml`` holds them).

    ``model`` is an untrained :class:`scae.Autoencoder` (its AnnData, loss, loss parameters
    and the configured architecture). A trial trains from fresh weights with the sampled
    settings (``max_epochs = params.max_epochs``, the rest of ``train_params`` as given,
    training seed ``params.seed``) and scores the criterion at its best epoch (the epoch early
    stopping keeps, chosen by validation loss). TPE samples at random for its first 4 trials;
    the median pruner stops a trial whose best score so far after an epoch is worse than the
    median of earlier trials at that epoch (after 3 finished trials and 5 warm-up epochs). A
    trial whose loss diverges is recorded as failed and the search goes on.
    """
    import optuna

    data, spec, loss_params = model.training_data(), model.loss, model.loss_params
    model_params, device = model.module_params, resolve_device(device)

    column, maximize = CRITERIA[params.criterion]
    space = params.space
    # One seed per (tune seed, loss): losses get independent but reproducible samplers.
    sampler_seed = params.seed * 1_000_003 + zlib.crc32(spec.name.encode())
    study = optuna.create_study(
        direction="maximize" if maximize else "minimize",
        sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=4),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=5),
    )
    configured = {"learning_rate": train_params.learning_rate,
                  "weight_decay": train_params.weight_decay,
                  "batch_size": train_params.batch_size, "dropout": model_params.dropout,
                  "hidden": model_params.hidden}
    if space.contains(configured):
        study.enqueue_trial({**configured, "hidden": _hidden_key(model_params.hidden)})
    else:
        logger.info("the configured settings %s lie outside tune.space: no trial starts there",
                    configured)
    outcomes: dict[int, dict] = {}

    def objective(trial) -> float:
        chosen = {
            "learning_rate": trial.suggest_float("learning_rate", *space.learning_rate,
                                                 log=True),
            "weight_decay": trial.suggest_categorical("weight_decay", list(space.weight_decay)),
            "batch_size": trial.suggest_categorical("batch_size", list(space.batch_size)),
            "dropout": trial.suggest_float("dropout", *space.dropout),
            "hidden": tuple(int(w) for w in trial.suggest_categorical(
                "hidden", [_hidden_key(h) for h in space.hidden]).split(",")),
        }
        outcome = {"epochs": 0, "best_epoch": 0, "stopped_by": "", "score": np.nan}
        outcomes[trial.number] = outcome
        best_val_loss = np.inf

        def report(row: dict) -> None:
            nonlocal best_val_loss
            outcome["epochs"] = row["epoch"]
            if row["val_loss"] < best_val_loss:  # the epoch early stopping would keep
                best_val_loss = row["val_loss"]
                outcome.update(best_epoch=row["epoch"], score=row[column])
            trial.report(outcome["score"], row["epoch"])
            if trial.should_prune():
                outcome["stopped_by"] = "pruned"
                raise optuna.TrialPruned()

        outcome["stopped_by"] = "diverged"  # unless fit returns
        result = fit(
            data, spec, loss_params,
            replace(model_params, dropout=chosen["dropout"], hidden=chosen["hidden"]),
            replace(train_params, learning_rate=chosen["learning_rate"],
                    weight_decay=chosen["weight_decay"], batch_size=chosen["batch_size"],
                    max_epochs=params.max_epochs),
            seed=params.seed, device=device, on_epoch=report,
        )
        outcome["stopped_by"] = result.stopped_by
        return float(outcome["score"])

    study.optimize(objective, n_trials=params.n_trials, catch=(TrainingDiverged,))
    rows = []
    for trial in study.trials:
        rows.append({
            "trial": trial.number, "state": trial.state.name.lower(),
            **{name: trial.params[name] for name in TUNED}, **outcomes[trial.number],
        })
    trials = pd.DataFrame(rows)
    best = study.best_trial
    chosen = {**best.params, "hidden": [int(w) for w in best.params["hidden"].split(",")]}
    settings = {
        "loss": spec.name, "criterion": params.criterion, "score": float(best.value),
        "trial": best.number, "n_trials": len(trials),
        "model": {name: chosen[name] for name, where in TUNED.items() if where == "model"},
        "train": {name: chosen[name] for name, where in TUNED.items() if where == "train"},
    }
    logger.info("best trial %d of %d: %s = %.5f with %s", best.number, len(trials),
                params.criterion, best.value, chosen)
    return trials, settings


def apply_best(model: dict, train: dict, best: dict) -> tuple[dict, dict]:
    """The ``model`` and ``train`` config sections with a ``best.yaml``'s settings applied."""
    return {**model, **best["model"]}, {**train, **best["train"]}
