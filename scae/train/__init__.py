"""Training: the fit loop, the optimiser and tuning.

The fit loop with early stopping and checkpoints, running a trained model over cells
(:mod:`scae.train.inference`), the optimiser, and tuning (:mod:`scae.train.tune` with its
pruner, :mod:`scae.train.pruning`; neither is imported here: they load optuna, which fitting a
model does not need).
"""

from ..module._kernels import keep_freed_memory
from .cells import CellData, resolve_device
from .trainer import TrainingDiverged, TrainParams, fit

__all__ = [
    "CellData",
    "TrainParams",
    "TrainingDiverged",
    "fit",
    "keep_freed_memory",
    "resolve_device",
]
