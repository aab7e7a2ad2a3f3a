"""Pruning for tuning: when a trial is stopped before it ends (``tune.pruner``).

Pruning judges where a trial would end, not how fast it starts. A trial reports, after every
epoch e, its score at the epoch early stopping would keep so far (a best-so-far score, which
after the trial ends stays its end-point score). ``endpoint`` (:class:`EndpointPruner`): no trial
is judged before the warm-up, the best epoch of the first completed trial (where runs of this
loss typically reach their best; unknown, so nothing is pruned, until one has completed); from
then on a trial is stopped after epoch e when its score is worse than the median, over the
earlier completed or pruned trials, of each one's score by epoch e (its end-point score if it
ended before e). ``median`` is Optuna's MedianPruner as before (after 3 completed trials, from
epoch 5, against the trials that ran to epoch e): at epoch 5 a low learning rate or a large
batch is always behind, so it selects fast starters. ``none`` prunes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

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
