"""The performance kernels (scae.module._kernels) against torch's library path they replace:
the same training, loss by loss, with each switched off by library_path()."""

import numpy as np
import pytest
import torch

from scae.module import _kernels
from scae.module._kernels import KERNELS, FusedAdam, kernel_enabled, library_path
from scae.module.losses import get_loss
from scae.module.network import AutoencoderModule, ModelParams
from scae.train.cells import CellData
from scae.train.optim import adam
from scae.train.trainer import TrainParams, fit

CPU = torch.device("cpu")
#: No batch norm: a bias before batch norm has a zero gradient up to rounding, which Adam
#: scales to lr-sized steps, so those biases (and through BN's running mean, the validation
#: scores) follow the rounding of whichever path computed the gradient.
SHORT = TrainParams(batch_size=64, learning_rate=3e-3, max_epochs=3, patience=3)


def _history(data, loss, seed=0):
    spec = get_loss(loss)
    model = ModelParams(
        n_genes=data.n_vars,
        hidden=(64,),
        latent_dim=8,
        output=spec.output,
        dropout=0.0,
        batch_norm=False,
    )
    params = {"margin": 0.0, "negatives_per_cell": 1, "alpha": 0.5}
    result = fit(CellData(data, "none"), spec, params, model, SHORT, seed=seed, device=CPU)
    return result.history[["train_loss", "val_loss", "val_cosine"]].to_numpy()


@pytest.mark.parametrize(
    "loss, kernel",
    [
        ("mse", "mse"),
        ("cosine", "cosine"),
        ("cosine_embedding", "cosine"),
        ("mse_cosine", "mse"),
    ],
)
def test_training_on_the_kernel_equals_training_on_autograd(small_data, loss, kernel):
    """Three epochs under each path: the same losses to float32 rounding, accumulated."""
    with_kernel = _history(small_data, loss)
    with library_path(kernel):
        assert not kernel_enabled(kernel)
        with_autograd = _history(small_data, loss)
    np.testing.assert_allclose(with_kernel, with_autograd, rtol=2e-4)


@pytest.mark.parametrize(
    "loss, kernel",
    [
        ("mse", "mse"),
        ("cosine", "cosine"),
        ("cosine_embedding", "cosine"),
        ("pearson", "cosine"),
    ],
)
def test_kernel_loss_and_gradients_equal_autograd(small_data, loss, kernel):
    """One minibatch through the network: the loss and every parameter's gradient as
    autograd computes them through the formula, to float32 rounding."""
    spec, data = get_loss(loss), CellData(small_data, "none")
    torch.manual_seed(0)
    model = AutoencoderModule(
        ModelParams(
            n_genes=data.n_genes, hidden=(64,), latent_dim=8, output=spec.output, dropout=0.0
        )
    )
    inputs, batch, library = data.batch(data.rows("train")[:128], spec.uses_counts)
    params = {"margin": 0.0, "negatives_per_cell": 1, "alpha": 0.5}

    def loss_and_grads():
        model.zero_grad()
        batch.generator = torch.Generator().manual_seed(0)  # the same negative pairs
        value = spec.fn(model(inputs, library), batch, params)
        value.mean().backward()
        return value.detach(), [p.grad.clone() for p in model.parameters()]

    value, grads = loss_and_grads()
    with library_path(kernel):
        reference, reference_grads = loss_and_grads()
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-6)
    for grad, expected in zip(grads, reference_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_library_path_takes_the_library_code(small_data, monkeypatch):
    """Inside library_path() no hand-written kernel runs (each one is made to fail)."""

    def fail(*args, **kwargs):
        raise AssertionError("kernel called on the library path")

    for cls in (
        _kernels._CosineSimilarity,
        _kernels._MeanSquaredError,
    ):
        monkeypatch.setattr(cls, "apply", fail)
    monkeypatch.setattr(FusedAdam, "step", fail)
    with library_path():
        for loss in ("mse", "cosine", "nb"):
            _history(small_data, loss)
        assert isinstance(adam(torch.nn.Linear(2, 2).parameters(), CPU, 1e-3), torch.optim.Adam)
        assert not _kernels.keep_freed_memory()
    assert all(kernel_enabled(name) for name in KERNELS)  # restored on leaving


def test_library_path_rejects_an_unknown_kernel():
    with pytest.raises(ValueError, match="unknown kernels"):
        with library_path("fused_everything"):
            pass
