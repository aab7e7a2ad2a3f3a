"""Adam on torch's fused kernel, without ``torch.optim``'s start-up and per-step bookkeeping."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class FusedAdam:
    """Adam (Kingma & Ba, 2015) with L2 weight decay λ, as ``torch.optim.Adam(fused=True)``.

    Per parameter θ with gradient g, at step t:
    g ← g + λθ;  m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;
    θ ← θ − lr · m̂ / (√v̂ + ε),  with m̂ = m / (1 − β₁ᵗ) and v̂ = v / (1 − β₂ᵗ).

    It calls the kernel ``torch.optim.Adam(fused=True)`` calls, so the updates are bitwise the
    same. What it leaves out: constructing any ``torch.optim`` optimizer imports
    ``torch._dynamo`` (~2 s, paid by every training job), and ``step`` spends ~0.5 ms in
    Python per call (~5 % of a small MLP's step at batch 128).
    """

    def __init__(self, params: Iterable[Tensor], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # One step counter per parameter, float32 on its device: the kernel's contract.
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device)
                      for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        # Parameters without a gradient this step are left alone, steps included (as torch).
        active = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not active:
            return
        steps = [self.steps[i] for i in active]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            [self.params[i] for i in active], [self.params[i].grad for i in active],
            [self.exp_avg[i] for i in active], [self.exp_avg_sq[i] for i in active],
            [], steps, amsgrad=False, lr=self.lr, beta1=self.betas[0], beta2=self.betas[1],
            weight_decay=self.weight_decay, eps=self.eps, maximize=False,
        )

    def state_dict(self) -> dict[str, list[Tensor]]:
        return {"step": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict[str, list[Tensor]]) -> None:
        for name, current in self.state_dict().items():
            if len(state[name]) != len(current):
                raise ValueError(f"optimizer state '{name}' holds {len(state[name])} tensors "
                                 f"for {len(current)} parameters")
            for mine, saved in zip(current, state[name]):
                mine.copy_(saved)


def adam(params: Iterable[Tensor], device: torch.device, lr: float,
         weight_decay: float = 0.0) -> FusedAdam | torch.optim.Adam:
    """:class:`FusedAdam` where torch has the fused kernel for ``device`` (CPU and CUDA),
    else ``torch.optim.Adam``."""
    if device.type in ("cpu", "cuda") and hasattr(torch, "_fused_adam_"):
        return FusedAdam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
