"""The optimiser of every training run: Adam, on torch's fused kernel where it works."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor

from ..module._kernels import FusedAdam, fused_kernel_works, kernel_enabled

logger = logging.getLogger("scae")


def adam(
    params: Iterable[Tensor], device: torch.device, lr: float, weight_decay: float = 0.0
) -> FusedAdam | torch.optim.Adam:
    """Return the Adam optimiser for ``params`` on ``device``.

    :class:`FusedAdam` where torch's fused kernel works on ``device`` (CPU and CUDA);
    else ``torch.optim.Adam``, fused where torch fuses for that device (one log line says so).
    """
    fused = device.type in ("cpu", "cuda")
    if not kernel_enabled("adam"):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if fused_kernel_works(device):
        return FusedAdam(params, lr=lr, weight_decay=weight_decay)
    logger.info(
        "torch %s: the private _fused_adam_ op is missing or changed on %s; "
        "using torch.optim.Adam(fused=%s)",
        torch.__version__,
        device.type,
        fused,
    )
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def set_learning_rate(optimizer: FusedAdam | torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of either optimizer :func:`adam` returns (for a schedule)."""
    if isinstance(optimizer, FusedAdam):
        optimizer.lr = lr
    else:
        for group in optimizer.param_groups:
            group["lr"] = lr
