"""The training and inference code never mixes devices: a CPU-only stand-in for a GPU run.

The classic CUDA bug is a tensor made on the CPU on the fly (a mask, an ``arange``, the
library sizes, negative pairs, optimizer state) and then combined with a tensor on the
training device. Torch's ``meta`` device has CUDA's mixing rules: ``cpu + meta`` raises
"Tensor on device cpu is not on the expected device meta!", while 0-dim CPU scalars and CPU
index tensors are allowed, as on CUDA. So every loss configuration trains one step, runs
inference and a whole epoch of :func:`scae.train.fit` on ``meta`` here, through the
project's own code: the model, minibatches, ``_to_device``, losses, backward and optimizer.

Meta tensors have shapes but no values, so whatever the CUDA path reads back on the host
is answered by :class:`HostReadsOfMeta` (a boolean reads True, a number 0, a copy to the CPU
zeros, ``nonzero`` every index): the values are made up, the devices are not.

What this cannot catch: numerical differences between devices, CUDA kernels (fused Adam,
cuBLAS, atomics) and their nondeterminism, memory or speed. Those are bench/gpu_check.py's
job on a real GPU. Nor does it cover :class:`scae.module._kernels.FusedAdam` as CUDA steps it (its
meta kernel does not check devices), hence the explicit device check of its state below.
"""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import scae
from scae.config import CLUSTER_KEY
from scae.module._kernels import FusedAdam
from scae.module.losses import LOSSES
from scae.module.network import AutoencoderModule
from scae.train.cells import _minibatches, _to_device
from scae.train.inference import evaluate_split, latent_representation, reconstruction
from scae.train.optim import adam
from scae.train.trainer import TrainParams, fit

from .conftest import pbmc_subset

META = torch.device("meta")
SMALL = {"hidden": (16, 8), "latent_dim": 4}  # two hidden layers: dropout and batch norm twice
aten = torch.ops.aten


class HostReadsOfMeta(TorchDispatchMode):
    """Answers what the code reads back from a meta tensor on the host, which meta cannot:
    ``bool``/``.item()`` (True for a boolean, so ``if mask.any():`` takes its rare branch and
    ``if not isfinite(loss)`` passes; 0 for a number), a copy to the CPU (zeros of its shape
    and dtype, on the CPU as on CUDA) and ``nonzero`` (every index). Every other op runs as
    it is, device checks included."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.is_meta:
            if func is aten._local_scalar_dense.default:
                return True if x.dtype == torch.bool else 0
            if func is aten.nonzero.default:
                return torch.empty((x.numel(), x.dim()), dtype=torch.long, device=META)
            if func is aten._to_copy.default and kwargs.get("device") == torch.device("cpu"):
                return torch.zeros(x.shape, dtype=kwargs.get("dtype") or x.dtype)
        return func(*args, **kwargs)


def test_meta_mixes_devices_as_cuda_does():
    """The premise of this file, with :class:`HostReadsOfMeta` on as in every test."""
    with HostReadsOfMeta():
        with pytest.raises(RuntimeError, match="cpu is not on the expected device meta"):
            torch.ones(3, device=META) + torch.ones(3)
        assert (torch.ones(3, device=META) * torch.tensor(2.0)).is_meta  # a 0-dim CPU scalar
        assert torch.ones(4, 2, device=META)[torch.tensor([0, 3])].is_meta  # a CPU index


def _configs():
    """Every registered loss with each of its categorical choices (dispersion, negative
    sampling)."""
    for name, spec in LOSSES.items():
        for overrides in spec.variants():
            yield pytest.param(name, overrides, id="-".join([name, *overrides.values()]))


CONFIGS = list(_configs())


@pytest.fixture(scope="module")
def adata():
    """200 real pbmc3k cells × their 100 most-counted genes, registered as an API user would
    (``setup_anndata`` fills the split, library sizes and gene moments), with labels and a
    stand-in for ``preprocess(clusters=True)``'s column: on meta the groups' values never
    matter, and scanpy's preprocessing would take longer than this whole file."""
    raw = pbmc_subset(200)
    genes = np.argsort(-raw.X.sum(axis=0).A1, kind="stable")[:100]
    counts = sp.csr_matrix(raw.X[:, genes])
    adata = ad.AnnData(
        X=counts.log1p(),
        obs=raw.obs.copy(),
        var=raw.var.iloc[genes].copy(),
        layers={"counts": counts},
    )
    adata.obs[CLUSTER_KEY] = pd.Categorical((np.arange(adata.n_obs) % 3).astype(str))
    scae.Autoencoder.setup_anndata(adata, labels_key="cell_type")
    return adata


def _autoencoder(adata, loss, overrides) -> scae.Autoencoder:
    """The model settings, loss parameters and CellData exactly as ``Autoencoder.train``
    hands them to ``fit`` (output head and dispersion from the loss, groups from the
    negative sampling). Z-scored inputs: without them scaling and unscaling are the
    identity, with them they move the gene moments to the device."""
    return scae.Autoencoder(adata, loss, overrides, input_scaling="zscore", **SMALL)


def _assert_on_meta(tensors, what):
    wrong = {
        name: t if t is None else t.device
        for name, t in tensors.items()
        if t is None or t.device != META
    }
    assert not wrong, f"{what} not on meta: {wrong}"


@pytest.mark.parametrize(("loss", "overrides"), CONFIGS)
def test_training_step_on_meta(adata, loss, overrides):
    """One step of ``fit``'s loop: forward with the trainer's dropout, loss, backward, Adam."""
    ae = _autoencoder(adata, loss, overrides)
    data, spec = ae.training_data(), ae.loss
    model = AutoencoderModule(ae.module_params).to(META)
    optimizer = adam(model.parameters(), META, lr=1e-3)
    assert isinstance(optimizer, torch.optim.Adam)  # CUDA gets FusedAdam: see below
    model.train()
    idx = next(_minibatches(data.rows("train"), 64, np.random.default_rng(0)))
    inputs, batch, library = data.batch(idx, spec.uses_counts)
    batch = _to_device(batch, META)
    batch.generator = torch.Generator().manual_seed(0)
    with HostReadsOfMeta():
        out = model(inputs.to(META), library.to(META))
        loss_value = spec.fn(out, batch, ae.loss_params).mean()
        optimizer.zero_grad(set_to_none=True)
        loss_value.backward()
        optimizer.step()
    assert loss_value.device == META and loss_value.shape == ()
    params = dict(model.named_parameters())
    _assert_on_meta({name: p.grad for name, p in params.items()}, "gradients")
    _assert_on_meta(
        {
            f"{name}.{key}": optimizer.state[p][key]
            for name, p in params.items()
            for key in ("exp_avg", "exp_avg_sq")
        },
        "Adam's moments",
    )


@pytest.mark.parametrize(("loss", "overrides"), CONFIGS)
def test_inference_on_meta(adata, loss, overrides):
    """Validation scores (unscaled, centred), the embedding and both reconstructions."""
    ae = _autoencoder(adata, loss, overrides)
    data = ae.training_data()
    model = AutoencoderModule(ae.module_params).to(META)
    val, test = data.rows("val"), data.rows("test")
    with HostReadsOfMeta():
        scores = evaluate_split(model, data, ae.loss, ae.loss_params, val, META, seed=0)
        latent = latent_representation(model, data, test, META)
        expression = reconstruction(model, data, test, META)
        counts = reconstruction(model, data, test, META, counts=True)
    assert set(scores) == {"val_loss", "val_cosine", "val_centred_cosine", "val_mse"}
    assert latent.shape == (len(test), SMALL["latent_dim"])
    assert expression.shape == counts.shape == (len(test), data.n_genes)


@pytest.mark.parametrize(("loss", "overrides"), CONFIGS)
def test_fit_on_meta(adata, loss, overrides):
    """An epoch of ``fit`` as it is (seeding, the step, validation, keeping the best weights);
    one minibatch: the step itself is the test above."""
    ae = _autoencoder(adata, loss, overrides)
    with HostReadsOfMeta():
        result = fit(
            ae.training_data(),
            ae.loss,
            ae.loss_params,
            ae.module_params,
            TrainParams(batch_size=adata.n_obs, max_epochs=1),
            seed=0,
            device=META,
        )
    assert len(result.history) == 1
    _assert_on_meta(dict(result.model.state_dict()), "restored best weights")


def test_fused_adam_keeps_its_state_on_the_parameters_device(adata):
    """What CUDA steps (``adam`` picks FusedAdam there): its moments and step counters must
    live on the parameters' device, which the kernel's meta version does not check."""
    params = list(
        AutoencoderModule(_autoencoder(adata, "zinb", {}).module_params).to(META).parameters()
    )
    optimizer = FusedAdam(params, lr=1e-3, weight_decay=1e-4)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    _assert_on_meta(
        {
            f"{key}[{i}]": t
            for key, tensors in optimizer.state_dict().items()
            for i, t in enumerate(tensors)
        },
        "FusedAdam's state",
    )
