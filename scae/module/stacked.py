"""Several autoencoders of one architecture as one module: batched matrix products.

M members that share :class:`~scae.module.network.ModelParams` except their latent rank run
one forward and one backward per minibatch. Every layer whose shape does not depend on the
rank (the encoder, the decoder's hidden layers, the heads) is held as one stack of the M
members' weights, stored transposed, (M, in, out), which spares ``bmm`` a copy of every
weight gradient, and applied with ``torch.baddbmm`` where, at its shapes and threads, that
product and its gradients are bitwise what each member's ``nn.Linear`` computes
(:func:`batched_linear_is_exact`, probed once per shape); elsewhere each member runs its own
``F.linear``. Batch norm runs over a (B, M·H) view, one channel per member and unit (bitwise
``nn.BatchNorm1d``'s per member). The small layers next to the latent code, whose shapes
depend on the rank, stay one tensor per member and run as each member's own ``F.linear``:
stacking them saves nothing and, at ranks below 32, would not give the same bits. The
optimiser steps each member's slice of a stack as its own tensor
(:attr:`StackedAutoencoder.stacked`, :class:`~scae.module._kernels.FusedAdam`).

``tests/test_stacked.py`` holds a stacked run bitwise equal to its members trained alone.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batch import DecoderOutput
from .network import LOG_THETA_RANGE, AutoencoderModule, pca_term

#: A layer's output: (M, B, D), or one (B, D_m) tensor per member where D depends on the rank.
Activation = Tensor | list[Tensor]

_HEADS = ("head", "log_theta_head", "dropout_head")


class StackedAutoencoder:
    """M autoencoders trained as one; :meth:`member_state` gives each one's weights back.

    Parameters
    ----------
    members
        Modules of the same architecture (:class:`~scae.module.network.ModelParams` equal but
        for ``latent_dim``), on one device, each initialised as it would be alone.

    Notes
    -----
    Every tensor in :attr:`parameters` is a leaf the optimiser steps. :meth:`keep` drops members
    (those whose training has stopped) by re-stacking what the others hold, so a stopped member
    costs nothing more.
    """

    def __init__(self, members: list[AutoencoderModule]):
        first = members[0].params
        for member in members[1:]:
            if {**member.params.to_dict(), "latent_dim": 0} != {**first.to_dict(), "latent_dim": 0}:
                raise ValueError(
                    "stacked members must share their architecture but for latent_dim: "
                    f"{member.params} differs from {first}"
                )
        self.params = first
        self.ranks = [m.params.latent_dim for m in members]
        self._layers = _layer_program(members[0])
        #: the linear layers next to the latent code (and the PCA path): one tensor per member
        self._per_member = _latent_layers(self._layers) | (
            {"pca_path"} if first.pca_path else set()
        )
        self._bn_settings = {
            name: (layer.momentum, layer.eps)
            for name, layer in members[0].named_modules()
            if isinstance(layer, nn.BatchNorm1d)
        }
        states = [m.state_dict() for m in members]
        learnt = dict(members[0].named_parameters())
        self._counter_names = [f"{name}.num_batches_tracked" for name in self._bn_settings]
        self.batches_tracked = int(states[0][self._counter_names[0]]) if self._counter_names else 0
        #: name → [one (M, …) stack] or [one tensor per member]
        self.tensors: dict[str, list[Tensor]] = {}
        for name, value in states[0].items():
            if name.endswith("num_batches_tracked"):
                continue
            values = [state[name].detach() for state in states]
            if name.rpartition(".")[0] in self._per_member:
                tensors = [v.clone() for v in values]
            elif name.endswith(".weight") and value.dim() == 2:  # stored (M, in, out)
                tensors = [torch.stack([v.t() for v in values]).contiguous()]
            else:
                tensors = [torch.stack(values)]
            self.tensors[name] = [t.requires_grad_(name in learnt) for t in tensors]
        self.training = True

    @property
    def size(self) -> int:
        """Number of members."""
        return len(self.ranks)

    @property
    def parameters(self) -> list[Tensor]:
        """The learnt leaf tensors, in a fixed order (the optimiser's)."""
        return [t for tensors in self.tensors.values() for t in tensors if t.requires_grad]

    @property
    def stacked(self) -> list[bool]:
        """Per tensor of :attr:`parameters`, whether it holds every member on its first axis."""
        return [
            name.rpartition(".")[0] not in self._per_member
            for name, tensors in self.tensors.items()
            for t in tensors
            if t.requires_grad
        ]

    def train(self, mode: bool = True) -> StackedAutoencoder:
        """Switch to training mode (batch statistics, dropout) or, with ``mode=False``, eval."""
        self.training = mode
        return self

    def eval(self) -> StackedAutoencoder:
        """Switch to evaluation mode: running batch-norm statistics, no dropout."""
        return self.train(False)

    def dropout_widths(self) -> list[int]:
        """Return the width of each dropout layer's input, in forward order (the masks' shapes)."""
        widths, width = [], 0
        for kind, name in self._layers:
            if kind == "linear":  # its output width: (out, in) per member, (M, in, out) stacked
                weight = self.tensors[f"{name}.weight"][0]
                width = weight.shape[0] if name in self._per_member else weight.shape[-1]
            elif kind == "dropout":
                widths.append(width)
        return widths

    # -- forward ------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        library: Tensor | None = None,
        dropout_masks: list[Tensor] | None = None,
    ) -> DecoderOutput:
        """Every member's decoder output for its own minibatch, or for a shared one.

        Parameters
        ----------
        x
            (M, B, G): member m's model inputs in ``x[m]``; or (B, G), one minibatch for all.
        library
            Library sizes for the count heads: (M, B), or (B,) with a shared minibatch.
        dropout_masks
            In training mode with dropout, one (M, B, H) mask per dropout layer in forward
            order (:meth:`dropout_widths`), scaled by 1/(1 − p) as ``nn.Dropout`` scales it.

        Returns
        -------
        DecoderOutput
            Its fields with a leading member axis: ``expression`` or ``mu`` (M, B, G), ``theta``
            (M, G) or (M, B, G), ``dropout_logits`` (M, B, G).
        """
        masks = iter(dropout_masks or [])
        h: Activation = x
        latent: Activation = x
        for kind, name in self._layers:
            if kind == "linear":
                h = self._linear(name, h)
                if name == "to_latent" and self.params.pca_path:
                    h = latent = self._add_pca_term("encoder", x, h)
            elif kind == "batch_norm":
                h = self._batch_norm(name, h)
            elif kind == "relu":
                h = torch.relu(h)
            elif self.training:  # dropout
                h = h * next(masks)
        return self._heads(h, library, latent)

    __call__ = forward

    def _linear(self, name: str, h: Activation) -> Tensor | list[Tensor]:
        weights, biases = self.tensors[f"{name}.weight"], self.tensors[f"{name}.bias"]
        if name in self._per_member:  # each member's own nn.Linear
            if not isinstance(h, list):
                h = [h] * self.size if h.dim() == 2 else list(h.unbind())
            out = [F.linear(hm, w, b) for hm, w, b in zip(h, weights, biases)]
            return torch.stack(out) if len({o.shape for o in out}) == 1 else out
        shared = h.dim() == 2  # a shared minibatch: the same rows for every member
        n_in, n_out = weights[0].shape[1:]
        if batched_linear_is_exact(
            self.size, h.shape[-2], n_in, n_out, shared, torch.is_grad_enabled(), h.device.type,
            torch.get_num_threads(),
        ):  # fmt: skip
            inputs = h.expand(self.size, *h.shape) if shared else h
            return torch.baddbmm(biases[0].unsqueeze(1), inputs, weights[0])
        # each member's nn.Linear product, on its weight laid out as nn.Linear holds it
        inputs = [h] * self.size if shared else h.unbind()
        return torch.stack(
            [
                F.linear(x, w.t().contiguous(), b)
                for x, w, b in zip(inputs, weights[0].unbind(), biases[0].unbind())
            ]
        )

    def _add_pca_term(
        self, part: str, inputs: Activation, base: Activation, counts: bool = False
    ) -> Tensor | list[Tensor]:
        """Return ``base`` plus each member's PCA path term of ``inputs`` (encoder/decoder)."""
        weights = self.tensors[f"pca_path.{part}_weight"]
        biases = self.tensors[f"pca_path.{part}_bias"]
        if not isinstance(inputs, list):
            inputs = [inputs] * self.size if inputs.dim() == 2 else list(inputs.unbind())
        out = [
            b + pca_term(x, w, bias, counts) for b, x, w, bias in zip(base, inputs, weights, biases)
        ]
        return torch.stack(out) if len({o.shape for o in out}) == 1 else out

    def _batch_norm(self, name: str, h: Tensor) -> Tensor:
        m, b, width = h.shape
        flat = h.transpose(0, 1).reshape(b, m * width)  # one channel per member and unit
        momentum, eps = self._bn_settings[name]
        out = F.batch_norm(
            flat,
            self.tensors[f"{name}.running_mean"][0].view(-1),
            self.tensors[f"{name}.running_var"][0].view(-1),
            self.tensors[f"{name}.weight"][0].view(-1),
            self.tensors[f"{name}.bias"][0].view(-1),
            training=self.training,
            momentum=momentum,
            eps=eps,
        )
        return out.view(b, m, width).transpose(0, 1).contiguous()

    def _heads(self, h: Activation, library: Tensor | None, latent: Activation) -> DecoderOutput:
        logits = self._linear("head", h)
        if self.params.pca_path:
            counts = self.params.output != "expression"
            logits = self._add_pca_term("decoder", latent, logits, counts)
        if self.params.output == "expression":
            return DecoderOutput(expression=logits)
        if library is None:
            raise ValueError("count heads need each cell's library size")
        out = DecoderOutput(mu=torch.softmax(logits, dim=-1) * library[..., None])
        if self.params.output in ("nb", "zinb"):
            log_theta = (
                self.tensors["log_theta"][0]
                if self.params.dispersion == "gene"
                else self._linear("log_theta_head", h)
            )
            out.theta = log_theta.clamp(*LOG_THETA_RANGE).exp()
        if self.params.output == "zinb":
            out.dropout_logits = self._linear("dropout_head", h)
        return out

    # -- members ------------------------------------------------------------------------------

    def member_state(self, member: int) -> dict[str, Tensor]:
        """Return a copy of member ``member``'s state dict, named as its own module names it."""
        state = {}
        for name, tensors in self.tensors.items():
            if len(tensors) > 1 or name.rpartition(".")[0] in self._per_member:
                value = tensors[member]
            elif name.endswith(".weight") and tensors[0].dim() == 3:
                value = tensors[0][member].t()
            else:
                value = tensors[0][member]
            state[name] = value.detach().clone(memory_format=torch.contiguous_format)
        for name in self._counter_names:
            state[name] = torch.tensor(self.batches_tracked)
        return state

    def count_step(self) -> None:
        """Count one training step in every batch-norm layer, as ``nn.BatchNorm1d`` does."""
        self.batches_tracked += 1

    def keep(self, members: list[int]) -> list[tuple[Tensor, Tensor | None]]:
        """Keep only ``members`` (positions, in the order they keep); drop the others.

        Returns, per tensor of :attr:`parameters` (in that order), the pair (that tensor, the
        index of its rows kept; None when it is dropped whole): what an optimiser needs to
        re-stack its own state the same way.
        """
        moves: list[tuple[Tensor, Tensor | None]] = []
        self.tensors = self.members_of(self.tensors, members, moves)
        self.ranks = [self.ranks[m] for m in members]
        return moves

    def members_of(
        self,
        tensors: dict[str, list[Tensor]],
        members: list[int],
        moves: list[tuple[Tensor, Tensor | None]] | None = None,
    ) -> dict[str, list[Tensor]]:
        """Return ``tensors`` with only ``members``' rows, in that order.

        ``tensors`` is laid out as :attr:`tensors` (a weight average of them, say); the moves of
        learnt ones are appended to ``moves`` when given (see :meth:`keep`).
        """
        kept_tensors = {}
        for name, values in tensors.items():
            learnt = values[0].requires_grad
            if len(values) > 1 or name.rpartition(".")[0] in self._per_member:
                if learnt and moves is not None:
                    kept = set(members)
                    moves += [
                        (t, torch.arange(len(t), device=t.device) if m in kept else None)
                        for m, t in enumerate(values)
                    ]
                kept_tensors[name] = [values[m] for m in members]
                continue
            index = torch.tensor(members, dtype=torch.long, device=values[0].device)
            if learnt and moves is not None:
                moves.append((values[0], index))
            kept_tensors[name] = [values[0].detach().index_select(0, index).requires_grad_(learnt)]
        return kept_tensors


@functools.cache
def batched_linear_is_exact(
    members: int,
    rows: int,
    n_in: int,
    n_out: int,
    shared: bool,
    grad: bool,
    device_type: str,
    threads: int,
) -> bool:
    """Whether ``torch.baddbmm`` over stacked weights gives every member ``nn.Linear``'s bits.

    Checked once per shape, thread count and device kind (cached), on random numbers: the
    forward product and, with ``grad``, the gradients of the weights, the bias and (for an own
    minibatch per member, ``shared`` False) the input. Whether two float32 products agree to the
    bit depends on the kernels' summation order, which the shapes and threads decide, not the
    values: measured on torch 2.13's CPU build, the products of the workflow's 2,000 → 256 →
    128 layers agree, those of a rank-8 or a 300 → 64 layer do not. Where they do not, each
    member runs its own ``F.linear`` (exact, a little slower). CUDA kernels promise no bits to
    compare with: there the batched product is used (True).
    """
    if device_type != "cpu":
        return True
    generator = torch.Generator().manual_seed(members * 7919 + rows)
    x = torch.randn(*((rows, n_in) if shared else (members, rows, n_in)), generator=generator)
    w = torch.randn(members, n_out, n_in, generator=generator) / n_in**0.5
    b = torch.randn(members, n_out, generator=generator)
    up = torch.randn(members, rows, n_out, generator=generator)
    with torch.set_grad_enabled(grad):
        alone = []
        for m in range(members):
            xm = (x if shared else x[m]).clone().requires_grad_(grad and not shared)
            wm, bm = w[m].clone().requires_grad_(grad), b[m].clone().requires_grad_(grad)
            y = F.linear(xm, wm, bm)
            if grad:
                y.backward(up[m])
            alone.append((y.detach(), wm.grad, bm.grad, xm.grad))
        xs = x.clone().requires_grad_(grad and not shared)
        ws = w.transpose(1, 2).contiguous().requires_grad_(grad)
        bs = b.clone().requires_grad_(grad)
        y = torch.baddbmm(bs.unsqueeze(1), xs.expand(members, rows, n_in) if shared else xs, ws)
        if grad:
            y.backward(up)
    same = torch.equal(y.detach(), torch.stack([a[0] for a in alone]))
    if grad:
        same = same and torch.equal(ws.grad.transpose(1, 2), torch.stack([a[1] for a in alone]))
        same = same and torch.equal(bs.grad, torch.stack([a[2] for a in alone]))
        if not shared:
            same = same and torch.equal(xs.grad, torch.stack([a[3] for a in alone]))
    return same


def _layer_program(module: AutoencoderModule) -> list[tuple[str, str]]:
    """Return the forward pass of ``module`` as (kind, state-dict prefix) steps, no heads."""
    kinds = {nn.Linear: "linear", nn.BatchNorm1d: "batch_norm", nn.ReLU: "relu"}
    program = [
        (kinds.get(type(layer), "dropout"), f"encoder.{i}")
        for i, layer in enumerate(module.encoder)
    ]
    program.append(("linear", "to_latent"))
    program += [
        (kinds.get(type(layer), "dropout"), f"decoder.{i}")
        for i, layer in enumerate(module.decoder)
    ]
    return program


def _latent_layers(program: list[tuple[str, str]]) -> set[str]:
    """Return the latent projection and the linear layer(s) reading the latent code."""
    decoder = [name for kind, name in program if kind == "linear" and name.startswith("decoder")]
    return {"to_latent", *(decoder[:1] or _HEADS)}
