"""The optimiser of every training run: Adam, on torch's fused kernel where it works."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor

from ..module._kernels import FusedAdam, fused_kernel_works, kernel_enabled

logger = logging.getLogger("scae")


def adam(
    params: Iterable[Tensor],
    device: torch.device,
    lr: float,
    weight_decay: float = 0.0,
    stacked: list[bool] | None = None,
) -> FusedAdam | torch.optim.Adam:
    """Return the Adam optimiser for ``params`` on ``device``.

    :class:`FusedAdam` where torch's fused kernel works on ``device`` (CPU and CUDA);
    else ``torch.optim.Adam``, fused where torch fuses for that device (one log line says so).
    ``stacked`` marks the parameters that hold several models on their first axis
    (:class:`FusedAdam` steps each model's slice as its own tensor; ``torch.optim.Adam`` cannot,
    so a stack's updates there may differ from its models' alone in the last bit).
    """
    fused = device.type in ("cpu", "cuda")
    if not kernel_enabled("adam"):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if fused_kernel_works(device):
        return FusedAdam(params, lr=lr, weight_decay=weight_decay, stacked=stacked)
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


def restack(
    optimizer: FusedAdam | torch.optim.Adam,
    moves: list[tuple[Tensor, Tensor | None]],
    params: list[Tensor],
    stacked: list[bool],
) -> FusedAdam | torch.optim.Adam:
    """Return :func:`adam`'s optimiser over re-stacked ``params``, its state re-stacked alike.

    ``moves`` pairs each parameter the optimiser held (in its order) with the index of the rows
    kept in ``params`` (None: none kept), as
    :meth:`scae.module.stacked.StackedAutoencoder.keep` returns them. Adam's state is
    per element, so the kept rows' moments and step counts continue unchanged. ``stacked`` as
    in :func:`adam`, for ``params``.
    """
    if isinstance(optimizer, FusedAdam):
        kept = [(k, index) for k, (_, index) in enumerate(moves) if index is not None]
        new = FusedAdam(
            params, lr=optimizer.lr, weight_decay=optimizer.weight_decay, stacked=stacked
        )
        new.betas, new.eps = optimizer.betas, optimizer.eps
        new.exp_avg = [optimizer.exp_avg[k].index_select(0, index) for k, index in kept]
        new.exp_avg_sq = [optimizer.exp_avg_sq[k].index_select(0, index) for k, index in kept]
        new.steps = [optimizer.steps[k].clone() for k, _ in kept]
        return new
    group = optimizer.param_groups[0]
    new = torch.optim.Adam(
        params, lr=group["lr"], weight_decay=group["weight_decay"], fused=group["fused"]
    )
    kept = iter(params)
    for old, index in moves:
        if index is None:
            continue
        param = next(kept)
        if old in optimizer.state:
            state = optimizer.state[old]
            new.state[param] = {
                name: value if value.dim() == 0 else value.index_select(0, index)
                for name, value in state.items()
            }
    return new
