"""Training: the fit loop with early stopping and checkpoints, the optimiser, and tuning."""

from ..module._kernels import keep_freed_memory
from .cells import CellData, resolve_device
from .trainer import TrainingDiverged, TrainParams, fit
from .tune import TuneParams, tune

__all__ = [
    "CellData",
    "TrainParams",
    "TrainingDiverged",
    "TuneParams",
    "fit",
    "keep_freed_memory",
    "resolve_device",
    "tune",
]
