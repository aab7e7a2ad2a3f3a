"""Training: the fit loop, the optimiser and tuning.

The fit loop with early stopping and checkpoints, the optimiser, and tuning
(:mod:`scae.train.tune`, not imported here: it loads optuna, which fitting a model does not
need).
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
