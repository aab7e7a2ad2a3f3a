"""The performance kernels: hand-written code on paths where torch's library path is slower.

* backward passes written out for the cosine and MSE losses (:class:`_CosineSimilarity`,
  :class:`_MeanSquaredError`), where autograd would keep every intermediate of the forward
  pass;
* :class:`FusedAdam`, Adam on torch's fused kernel without ``torch.optim``'s per-step
  bookkeeping (:func:`fused_kernel_works` checks it, else :func:`scae.train.optim.adam` falls
  back to ``torch.optim.Adam``);
* :func:`keep_freed_memory`, glibc's ``mallopt`` so that a training process keeps the memory
  it frees between minibatches instead of returning it to the system.

Each has a library path that computes the same thing; :func:`library_path` switches to it
(tests/test_kernels.py holds the two equal; ``python bench/run.py --only kernels``
measures what each kernel gains, recorded in bench/README.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

#: The kernels, by name; each has a library path that computes the same thing.
KERNELS = ("cosine", "mse", "adam", "mallopt")
#: The kernels in use. Changed only through :func:`library_path` (tests and bench/), so a
#: training job always runs with all of them.
_enabled: set[str] = set(KERNELS)


def kernel_enabled(name: str) -> bool:
    """Whether kernel ``name`` (one of :data:`KERNELS`) is in use, else its library path."""
    return name in _enabled


@contextlib.contextmanager
def library_path(*names: str) -> Iterator[None]:
    """Switch the named kernels (all when none is named) to torch's library path in the block.

    Inside the block the kernels give way to torch's library path: autograd through the loss
    formulas (``cosine``, ``mse``), ``torch.optim.Adam(fused=True)`` (``adam``), and glibc's
    default allocator settings (``mallopt``). Tests hold both paths equal; bench/ measures
    what each kernel gains.
    """
    unknown = set(names) - set(KERNELS)
    if unknown:
        raise ValueError(f"unknown kernels {sorted(unknown)}; kernels are {', '.join(KERNELS)}")
    off = set(names or KERNELS) & _enabled
    _enabled.difference_update(off)
    try:
        yield
    finally:
        _enabled.update(off)


class _CosineSimilarity(torch.autograd.Function):
    """Row-wise cos(a, b) with a hand-written backward.

    The backward makes two passes per input instead of autograd's chain through two norms, a
    product and a sum (the gradient is the same, including max(‖a‖, ε)'s: the norm term
    vanishes where ‖a‖ < ε).
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, eps: float) -> Tensor:
        norm_a = torch.linalg.vector_norm(a, dim=-1)
        norm_b = torch.linalg.vector_norm(b, dim=-1)
        denom_a, denom_b = norm_a.clamp_min(eps), norm_b.clamp_min(eps)
        cos = torch.linalg.vecdot(a, b) / (denom_a * denom_b)
        ctx.save_for_backward(a, b, norm_a, norm_b, denom_a, denom_b, cos)
        ctx.eps = eps
        return cos

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, norm_a, norm_b, denom_a, denom_b, cos = ctx.saved_tensors
        common = grad / (denom_a * denom_b)  # ∂cos/∂a = b/(‖a‖‖b‖) − cos·a/‖a‖²
        grads = []
        for x, y, norm, need in (
            (a, b, norm_a, ctx.needs_input_grad[0]),
            (b, a, norm_b, ctx.needs_input_grad[1]),
        ):
            if not need:
                grads.append(None)
                continue
            own = torch.where(norm >= ctx.eps, grad * cos / norm.clamp_min(ctx.eps) ** 2, 0.0)
            grads.append(torch.addcmul(y * common[..., None], x, own[..., None], value=-1))
        return grads[0], grads[1], None


class _MeanSquaredError(torch.autograd.Function):
    """mean_g (x̂_g − x_g)² per row in one pass each way.

    Autograd's pow/mean chain makes ~9 passes over the B × G minibatch, a tenth of a small
    MLP's training step.
    """

    @staticmethod
    def forward(ctx, recon: Tensor, target: Tensor) -> Tensor:
        diff = recon - target
        ctx.save_for_backward(diff)
        return torch.linalg.vector_norm(diff, dim=-1).square_().div_(diff.shape[-1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (diff,) = ctx.saved_tensors
        grad_recon = diff * (grad * (2.0 / diff.shape[-1]))[..., None]
        return grad_recon, (-grad_recon if ctx.needs_input_grad[1] else None)


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

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        stacked: Iterable[bool] | None = None,
    ):
        params = list(params)
        #: per parameter, whether it stacks several models' tensors on its first axis
        #: (:class:`scae.module.stacked.StackedAutoencoder`): then each model's slice is
        #: stepped as a tensor of its own, so that its elements fall into the kernel's
        #: vectorised body and scalar tail exactly as that model's own tensor would, and its
        #: update is bitwise the one alone (the two paths may round a multiply-add apart).
        self.stacked = [
            flag for p, flag in zip(params, stacked or [False] * len(params)) if p.requires_grad
        ]
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # One step counter per parameter, float32 on its device: the kernel's contract.
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the parameters' gradients: to None, or to zero (``set_to_none=False``)."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """Take one Adam step for every parameter that has a gradient."""
        # Parameters without a gradient this step are left alone, steps included (as torch).
        active = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not active:
            return
        torch._foreach_add_([self.steps[i] for i in active], 1)

        def tensors(values: list[Tensor]) -> list[Tensor]:  # stacked ones split per model
            return [
                part
                for i in active
                for part in (values[i].unbind() if self.stacked[i] else (values[i],))
            ]

        torch._fused_adam_(
            tensors(self.params),
            tensors([p.grad for p in self.params]),
            tensors(self.exp_avg),
            tensors(self.exp_avg_sq),
            [],
            [
                self.steps[i]
                for i in active
                for _ in range(len(self.params[i]) if self.stacked[i] else 1)
            ],
            amsgrad=False,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
        )

    def state_dict(self) -> dict[str, list[Tensor]]:
        """Return the optimizer state: per parameter its step count and both moments."""
        return {"step": self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state: dict[str, list[Tensor]]) -> None:
        """Copy a :meth:`state_dict` of the same parameters into this optimizer's state."""
        for name, current in self.state_dict().items():
            if len(state[name]) != len(current):
                raise ValueError(
                    f"optimizer state '{name}' holds {len(state[name])} tensors "
                    f"for {len(current)} parameters"
                )
            for mine, saved in zip(current, state[name]):
                mine.copy_(saved)


def fused_kernel_works(device: torch.device) -> bool:
    """Check that torch's private ``_fused_adam_`` op works on ``device``.

    Return whether the op exists for ``device`` and still computes, with the signature
    :class:`FusedAdam` calls, one textbook Adam step.

    The op is private: a torch release may rename it, change its signature or its meaning.
    This probe (a 2-element step, microseconds) turns any of those into a fallback instead
    of a crash or a silently different optimizer.
    """
    if device.type not in ("cpu", "cuda") or not hasattr(torch, "_fused_adam_"):
        return False
    param = torch.tensor([1.0, -2.0], device=device)
    grad = torch.tensor([0.5, 0.25], device=device)
    probe = FusedAdam([param.requires_grad_()], lr=0.1, weight_decay=0.01)
    param.grad = grad
    try:
        probe.step()
    except (RuntimeError, TypeError):
        return False
    with torch.no_grad():  # step 1: m̂ = g', v̂ = g'², so θ moves by lr·g'/(|g'| + ε)
        expected = torch.tensor([1.0, -2.0], device=device)
        g = grad + 0.01 * expected
        expected -= 0.1 * g / (g.abs() + 1e-8)
    return bool(torch.allclose(param.detach(), expected, rtol=1e-5, atol=1e-6))


#: glibc's largest mmap threshold (64-bit): buffers below it come from the reusable heap.
MMAP_THRESHOLD = 32 * 2**20


#: Free heap memory kept before any is returned to the OS: a few training steps' buffers.
TRIM_THRESHOLD = 256 * 2**20


def keep_freed_memory() -> bool:
    """Have glibc's malloc reuse freed minibatch-sized buffers instead of unmapping them.

    Every training step allocates a few B × G float32 buffers (the densified minibatch, the
    reconstruction, the loss's difference and gradient: 8 MB each at B = 1024, G = 2000). By
    default glibc hands back memory of that size to the OS once enough is free, so the next
    step faults every 4 KiB page in again (~2,000 faults and ~3 ms per step at B = 1024 on a
    single core, ~5 % of the step). Setting M_MMAP_THRESHOLD to 32 MiB and M_TRIM_THRESHOLD
    to 256 MiB keeps such buffers in the heap; arrays above 32 MiB (the data) are mmapped and
    returned as before. The price: the process may hold up to 256 MiB of freed memory.

    Process-wide, so the training entry point calls it, not the library. Returns whether the
    setting took: False where the C library has no ``mallopt`` (not glibc: a no-op).
    """
    if not kernel_enabled("mallopt"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (AttributeError, OSError, TypeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return mallopt(m_mmap_threshold, MMAP_THRESHOLD) == 1 and (
        mallopt(m_trim_threshold, TRIM_THRESHOLD) == 1
    )
