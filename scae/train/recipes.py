"""Training recipes that take variance out of one model: averaging, corruption, a PCA path.

Each is a setting, off at 0 (or false), applied the same way by :func:`scae.train.fit` and
:func:`scae.train.stacked.fit_stacked` (a stacked member is still bitwise its run alone):

- ``ema_decay`` d: the model that is validated, early-stopped and kept is an exponential moving
  average of the weights, a ← d·a + (1 − d)·w after every optimiser step (the first step's
  weights start it; batch-norm running statistics are averaged alike). This is
  ``torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d),
  use_buffers=True)``, written over plain tensor lists so a stack of models averages each
  member exactly as alone (tests hold the two equal).
- ``count_thinning`` t: each epoch, the model's *input* for a training cell is its counts
  thinned binomially (each molecule kept with probability 1 − t) and normalized as preprocessing
  normalized the cell, log1p(c' / ((1 − t)·L) · target_sum) with L the cell's library size, so
  the input is unbiased for the cell's expression; the loss still compares the reconstruction
  with the cell's full-depth expression (or counts): a denoising objective at the count level.
- ``input_masking`` p: each training input entry is set to zero with probability p (masking
  noise of a denoising autoencoder; no rescaling), the target left whole.
- ``pca_path`` (a :class:`~scae.module.network.ModelParams` setting, the architecture's): the
  training cells' PCA at the model's rank, frozen, is the model's linear path from input to
  latent code to output, and the network learns a residual on it, from PCA's reconstruction
  on (:func:`pca_path`; :class:`~scae.module.network.AutoencoderModule`).

Validation, test and training-cell scores always read uncorrupted inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from ..config import InputError
from ..pca import fit_pca
from .cells import CellData


def corrupt_inputs(
    inputs: Tensor,
    data: CellData,
    rows: np.ndarray,
    count_thinning: float,
    input_masking: float,
    generator: torch.Generator,
) -> Tensor:
    """Return the training input of ``rows`` under the corruption recipes (a new tensor).

    ``inputs`` is the uncorrupted model input of ``rows`` (:meth:`CellData.batch`), returned as
    it is when both rates are 0. Draws come from ``generator``: thinning first, then masking.
    """
    if count_thinning:
        inputs = data.scale(data.thinned_expression(rows, 1.0 - count_thinning, generator))
    if input_masking:
        keep = torch.empty_like(inputs).bernoulli_(1.0 - input_masking, generator=generator)
        inputs = inputs * keep
    return inputs


class WeightAverage:
    """The exponential moving average of a model's (or a stack's) weights.

    ``live`` tensors are given as a name → list of tensors mapping (a module's floating state,
    one tensor each, or :attr:`scae.module.stacked.StackedAutoencoder.tensors`). After each
    optimiser step :meth:`update` sets a ← a + (1 − d)·(w − a) per element (``Tensor.lerp_``);
    its first call copies w. Element-wise, so tensors stacked over several models average each
    model exactly as alone.
    """

    def __init__(self, decay: float):
        self.decay = decay
        #: the averages, laid out as the live tensors; None before the first update
        self.tensors: dict[str, list[Tensor]] | None = None

    def update(self, live: dict[str, list[Tensor]]) -> None:
        """Average in the weights after one more optimiser step."""
        with torch.no_grad():
            if self.tensors is None:
                self.tensors = {name: [t.detach().clone() for t in ts] for name, ts in live.items()}
                return
            for name, ts in live.items():
                for a, w in zip(self.tensors[name], ts):
                    a.lerp_(w.detach(), 1.0 - self.decay)

    @contextmanager
    def applied(self, live: dict[str, list[Tensor]]) -> Iterator[None]:
        """Within the block, ``live`` holds the averages; afterwards its own values again.

        Before the first update the block runs on the live weights.
        """
        if self.tensors is None:
            yield
            return
        pairs = [(t, a) for name, ts in live.items() for t, a in zip(ts, self.tensors[name])]
        with torch.no_grad():
            saved = [t.detach().clone() for t, _ in pairs]
            for t, a in pairs:
                t.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for (t, _), s in zip(pairs, saved):
                    t.copy_(s)


def floating_state(module: torch.nn.Module) -> dict[str, list[Tensor]]:
    """Return ``module``'s floating-point state as :class:`WeightAverage` takes it.

    Weights and batch-norm statistics: the live tensors themselves, one per name (integer step
    counters left out).
    """
    return {
        name: [value] for name, value in module.state_dict().items() if value.is_floating_point()
    }


def pca_path(data: CellData, rank: int, counts_head: bool) -> dict[str, Tensor]:
    """Return the buffers of a model's frozen PCA path (:class:`~scae.module.network.PcaPath`).

    PCA of the training cells' model inputs (sparse, implicitly centred: sklearn's ARPACK
    path, as the ``pca`` baseline; z-scored where the model's inputs are), at ``rank``: axes V
    (rank × genes) and centre c in the input space. The encoder term is V(x − c). The decoder
    term r = Vᵀz + c reconstructs in the input space, which an ``expression`` head predicts
    in; for a count head (``counts_head``) it is mapped back to log-normalized expression,
    r = s ⊙ (Vᵀz + c) + m under z-scoring (m, s the training cells' gene means and sds).
    Only training cells are read.
    """
    train = data.x[data.rows("train")]
    if rank >= min(train.shape):
        raise InputError(
            f"model.pca_path: a PCA at latent_dim {rank} needs more than {rank} genes and "
            f"training cells, and these data have {train.shape[1]} genes and {train.shape[0]} "
            "training cells; lower model.latent_dim or turn model.pca_path off"
        )
    zscore = data.input_scaling == "zscore"
    mean, std = data.mean.numpy().astype(np.float64), data.std.numpy().astype(np.float64)
    if zscore:  # (x − m)/s: the columns scaled here, the centring PCA's own
        train = train @ sp.diags(1 / std)
    pca = fit_pca(train, rank, seed=0)
    axes = pca.components_  # float64, rank × genes
    centre = pca.mean_ - mean / std if zscore else pca.mean_
    decoder_weight, decoder_bias = axes.T, centre
    if counts_head and zscore:
        decoder_weight, decoder_bias = std[:, None] * axes.T, std * centre + mean
    weights = {
        "encoder_weight": axes,
        "encoder_bias": -(axes @ centre),
        "decoder_weight": decoder_weight,
        "decoder_bias": decoder_bias,
    }
    return {
        name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        for name, value in weights.items()
    }
