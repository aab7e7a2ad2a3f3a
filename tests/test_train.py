"""Training: early stopping, exact resume, divergence, never densifying the whole matrix."""

import math
import resource

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scae.config import InputError
from scae.module.losses import LOSSES, LossSpec, get_loss
from scae.module.network import ModelParams
from scae.train import keep_freed_memory
from scae.train.cells import CellData, resolve_device
from scae.train.inference import (
    FitResult,
    latent_representation,
    load_model,
    reconstruction,
    save_model,
)
from scae.train.trainer import TrainingDiverged, TrainParams, fit

CPU = torch.device("cpu")
FAST = TrainParams(batch_size=64, learning_rate=3e-3, max_epochs=6, patience=3)


def _params(data, loss, **kw):
    return ModelParams(
        n_genes=data.n_vars, hidden=(64,), latent_dim=8, output=get_loss(loss).output, **kw
    )


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_trains_and_restores_best_epoch(small_data, loss):
    data = CellData(small_data, "none", group_key="cell_type")
    params = {"margin": 0.0, "negatives_per_cell": 2, "alpha": 0.5}
    result = fit(data, get_loss(loss), params, _params(small_data, loss), FAST, seed=0, device=CPU)
    history = result.history
    assert list(history.columns) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_cosine",
        "val_centred_cosine",
        "val_mse",
        "learning_rate",
        "seconds",
    ]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    best = history.loc[history["val_loss"].idxmin()]
    assert result.best_epoch == best["epoch"]
    from scae.train.inference import evaluate_split

    scores = evaluate_split(
        result.model, data, get_loss(loss), params, data.rows("val"), CPU, seed=0
    )
    assert scores["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)  # best restored
    assert -1 <= scores["val_cosine"] <= 1 and -1 <= scores["val_centred_cosine"] <= 1
    # the common-space scores against a direct computation on the validation cells
    recon = reconstruction(result.model, data, data.rows("val"), CPU)
    truth = small_data.X[data.rows("val")].toarray()
    assert scores["val_mse"] == pytest.approx(((recon - truth) ** 2).mean(), rel=1e-4)
    centre = small_data.var["train_mean"].to_numpy()
    a, b = recon - centre, truth - centre
    centred = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert scores["val_centred_cosine"] == pytest.approx(centred.mean(), rel=1e-4)


def test_zscore_round_trip(small_data):
    data = CellData(small_data, "zscore")
    x = torch.from_numpy(data.x[:5].toarray())
    torch.testing.assert_close(data.unscale(data.scale(x)), x, rtol=1e-5, atol=1e-5)


def test_resume_after_interruption_is_bitwise_identical(small_data, tmp_path, monkeypatch):
    data = CellData(small_data, "none")
    spec, model_params = get_loss("nb"), _params(small_data, "nb")
    args = (data, spec, {}, model_params, FAST, 1, CPU)
    straight = fit(*args)

    import scae.train.trainer as train_module

    real_evaluate = train_module.evaluate_split
    calls = {"n": 0}

    def dies_in_epoch_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill")
        return real_evaluate(*args, **kwargs)

    checkpoint = tmp_path / "ckpt.pt"
    monkeypatch.setattr(train_module, "evaluate_split", dies_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        fit(*args, checkpoint=checkpoint, checkpoint_interval=0)  # a save after every epoch
    assert torch.load(checkpoint, weights_only=True)["state"]["epoch"] == 3
    monkeypatch.setattr(train_module, "evaluate_split", real_evaluate)
    resumed = fit(*args, checkpoint=checkpoint)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert straight.history.drop(columns="seconds").equals(resumed.history.drop(columns="seconds"))


def test_checkpoints_are_written_at_the_interval_and_after_the_last_epoch(
    small_data, tmp_path, monkeypatch
):
    import scae.train.trainer as train_module

    data = CellData(small_data, "none")
    args = (data, get_loss("mse"), {}, _params(small_data, "mse"), FAST, 0, CPU)
    saves = []
    real_save = train_module._save_checkpoint
    monkeypatch.setattr(
        train_module,
        "_save_checkpoint",
        lambda path, key, model, optimizer, state: (
            saves.append(state["epoch"]),
            real_save(path, key, model, optimizer, state),
        ),
    )
    result = fit(*args, checkpoint=tmp_path / "every.pt", checkpoint_interval=0)
    assert saves == list(range(1, len(result.history) + 1))
    saves.clear()
    final = fit(*args, checkpoint=tmp_path / "final.pt", checkpoint_interval=math.inf)
    assert saves == [len(final.history)]  # only the finished state
    # a finished run's checkpoint is the run: resuming it trains no epoch and changes nothing
    monkeypatch.setattr(train_module, "train_epoch", _no_training)
    resumed = fit(*args, checkpoint=tmp_path / "final.pt")
    assert resumed.history.equals(final.history) and resumed.best_epoch == final.best_epoch
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def _no_training(*args, **kwargs):
    raise AssertionError("an epoch was trained")


def test_resume_from_is_used_only_for_the_same_cells_and_seed(small_data, tmp_path, monkeypatch):
    import scae.train.trainer as train_module

    data = CellData(small_data, "none")
    spec, model_params = get_loss("mse"), _params(small_data, "mse")
    finished = tmp_path / "trial.pt"
    trial = fit(data, spec, {}, model_params, FAST, 0, CPU, checkpoint=finished)

    other_cells = small_data.copy()
    counts = other_cells.layers["counts"].copy()
    counts.data[0] += 1  # one molecule more
    other_cells.layers["counts"] = counts
    other = CellData(other_cells, "none")
    assert other.digest != data.digest and CellData(small_data, "none").digest == data.digest
    for cells, seed in ((other, 0), (data, 1)):
        result = fit(cells, spec, {}, model_params, FAST, seed, CPU, resume_from=finished)
        assert not result.history["seconds"].equals(trial.history["seconds"])  # trained afresh
    monkeypatch.setattr(train_module, "train_epoch", _no_training)
    reused = fit(data, spec, {}, model_params, FAST, 0, CPU, resume_from=finished)
    assert reused.history.equals(trial.history)  # the trial's own rows, timings included


def test_checkpoint_of_other_settings_is_ignored(small_data, tmp_path):
    data = CellData(small_data, "none")
    checkpoint = tmp_path / "ckpt.pt"
    short = TrainParams(batch_size=64, max_epochs=2, patience=3)
    fit(data, get_loss("mse"), {}, _params(small_data, "mse"), short, 0, CPU, checkpoint)
    other = TrainParams(batch_size=64, learning_rate=1e-2, max_epochs=2, patience=3)
    result = fit(data, get_loss("mse"), {}, _params(small_data, "mse"), other, 0, CPU, checkpoint)
    assert len(result.history) == 2  # trained afresh, not resumed at epoch 2


def test_divergence_stops_with_learning_rate_hint(small_data):
    data = CellData(small_data, "none")
    exploding = LossSpec(
        "nan", lambda out, batch, p: out.expression.sum(1) * float("nan"), "expression", "NaN"
    )
    with pytest.raises(TrainingDiverged, match="lower train.learning_rate"):
        fit(data, exploding, {}, _params(small_data, "mse"), FAST, 0, CPU)


def test_an_epoch_reads_its_loss_back_to_the_host_once(small_data, monkeypatch):
    """No step waits for the device: the epoch's loss sum is read once, at its end (on a GPU
    a per-step .item() or isfinite check stalls the queue), and still equals the mean of the
    steps' losses that per-step reads gave."""
    from scae.module.network import AutoencoderModule
    from scae.train.optim import adam
    from scae.train.trainer import train_epoch

    data, spec = CellData(small_data, "none"), get_loss("mse")
    model = AutoencoderModule(_params(small_data, "mse"))
    optimizer = adam(model.parameters(), CPU, lr=1e-3, weight_decay=0.0)
    rows = data.rows("train")
    reads, losses = [], []
    real_item, real_bool, real_fn = torch.Tensor.item, torch.Tensor.__bool__, spec.fn
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append("item") or real_item(t))
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append("bool") or real_bool(t))

    def recorded(out, batch, params):
        value = real_fn(out, batch, params)
        losses.append((real_item(value.mean().detach()), len(batch.x)))
        return value

    spec = LossSpec(spec.name, recorded, spec.output, spec.formula)
    mean = train_epoch(model, optimizer, data, spec, {}, rows, FAST, 0, 1, CPU)
    assert reads == ["item"]
    assert len(losses) == -(-len(rows) // FAST.batch_size) > 1
    assert mean == sum(loss * n for loss, n in losses) / len(rows)


def test_never_densifies_the_whole_matrix(small_data, monkeypatch):
    n_cells = small_data.n_obs
    largest = {"rows": 0}
    real_toarray = sp.csr_matrix.toarray

    def guarded(self, *args, **kwargs):
        assert self.shape[0] < n_cells, "the full matrix was densified"
        largest["rows"] = max(largest["rows"], self.shape[0])
        return real_toarray(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", guarded)
    monkeypatch.setattr("scae.train.inference.EVAL_CHUNK", 100)
    data = CellData(small_data, "none")
    result = fit(data, get_loss("zinb"), {}, _params(small_data, "zinb"), FAST, 0, CPU)
    latent_representation(result.model, data, np.arange(n_cells), CPU)
    reconstruction(result.model, data, data.rows("test"), CPU)
    assert 0 < largest["rows"] <= 100


def test_model_file_loads_with_weights_only(small_data, tmp_path):
    data = CellData(small_data, "none")
    short = TrainParams(batch_size=64, max_epochs=1)
    result = fit(
        data,
        get_loss("zinb"),
        {},
        _params(small_data, "zinb", dispersion="gene-cell"),
        short,
        0,
        CPU,
    )
    save_model(tmp_path / "m.pt", result, {"loss": "zinb", "seed": 0})
    model, saved = load_model(tmp_path / "m.pt", CPU)
    assert saved["loss"] == "zinb" and model.params.dispersion == "gene-cell"
    latent = latent_representation(model, data, np.arange(small_data.n_obs), CPU)
    recon = reconstruction(model, data, data.rows("test"), CPU)
    assert latent.shape == (small_data.n_obs, 8)
    assert np.isfinite(recon).all() and recon.min() >= 0  # log1p of a mean count
    assert isinstance(result, FitResult)


def test_keep_freed_memory_reuses_step_sized_buffers():
    """After the first step, a step's worth of 8 MiB buffers comes back without page faults
    (glibc's defaults fault most of them in again every time)."""
    if not keep_freed_memory():
        pytest.skip("the C library is not glibc: mallopt is not available")

    def page_faults_of_a_step() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffers = [np.ones(2**21, dtype=np.float32) for _ in range(8)]  # written: touched
        del buffers
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    page_faults_of_a_step()  # the heap grows once
    pages = 8 * 2**21 * 4 // resource.getpagesize()
    assert page_faults_of_a_step() < 0.02 * pages


@pytest.mark.parametrize("gpus", [0, 1])
def test_a_cuda_device_the_job_cannot_see_is_named_before_any_work(monkeypatch, gpus):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert resolve_device("auto") == torch.device("cuda" if gpus else "cpu")
    assert resolve_device("cpu") == CPU
    missing = "cuda:1" if gpus else "cuda"
    with pytest.raises(
        InputError,
        match=rf"train.device is '{missing}' but this job sees "
        rf"{gpus} CUDA device.*use device: auto.*gpu: 1",
    ):
        resolve_device(missing)
    if gpus:
        assert resolve_device("cuda") == torch.device("cuda")
        assert resolve_device(torch.device("cuda:0")) == torch.device("cuda:0")


def test_reduce_on_plateau_multiplies_the_rate_after_every_lr_patience_bad_epochs(
    small_data, monkeypatch
):
    """Validation losses scripted: new bests at epochs 1, 2 and 6, none otherwise. With
    lr_patience 2 and lr_factor 0.5 the rate halves once a streak reaches 2 bad epochs
    (after epochs 4 and 8, applied from the next epoch); the best at epoch 6 resets it."""
    import scae.train.trainer as train_module

    real_evaluate = train_module.evaluate_split
    losses = iter([5.0, 4.0, 4.5, 4.5, 4.5, 3.0, 3.5, 3.5, 3.5, 3.5])

    def scripted(*args, **kwargs):
        return real_evaluate(*args, **kwargs) | {"val_loss": next(losses)}

    monkeypatch.setattr(train_module, "evaluate_split", scripted)
    plateau = TrainParams(
        batch_size=64, learning_rate=1e-3, max_epochs=10, patience=5, lr_patience=2, lr_factor=0.5
    )
    result = fit(
        CellData(small_data, "none"),
        get_loss("mse"),
        {},
        _params(small_data, "mse"),
        plateau,
        seed=0,
        device=CPU,
    )
    # the rate each epoch trained with: halved after the 2nd bad epoch of each streak
    assert result.history["learning_rate"].tolist() == [
        1e-3,
        1e-3,
        1e-3,
        1e-3,
        5e-4,
        5e-4,
        5e-4,
        5e-4,
        2.5e-4,
        2.5e-4,
    ]
    assert result.best_epoch == 6 and result.stopped_by == "max_epochs"


@pytest.mark.parametrize("lr_patience", [1, 2, 3])
def test_reduce_on_plateau_follows_torch_reduce_lr_on_plateau(lr_patience):
    """The rule in model selection is torch's ReduceLROnPlateau (mode min, no threshold, no
    cooldown) with patience lr_patience − 1: kept by hand because that scheduler requires a
    torch.optim optimizer, whose construction imports torch._dynamo (~3 s a job) where
    FusedAdam costs nothing (bench/README.md). Same rates epoch by epoch, ties included."""
    from scae.train.trainer import _select

    rng = np.random.default_rng(lr_patience)
    val_losses = np.round(rng.normal(size=60).cumsum() * 0.1 + 5.0, 1)  # rounding makes ties
    params = TrainParams(lr_patience=lr_patience, lr_factor=0.5, learning_rate=1e-2)
    model = torch.nn.Linear(2, 2)
    ours = torch.optim.SGD(model.parameters(), lr=params.learning_rate)
    theirs = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=params.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        theirs,
        mode="min",
        factor=params.lr_factor,
        patience=lr_patience - 1,
        threshold=0.0,
        cooldown=0,
        eps=0.0,
    )
    state = {
        "epoch": 0,
        "best_val": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "lr": params.learning_rate,
    }
    rates = []
    for epoch, loss in enumerate(val_losses, start=1):
        _select(state, epoch, float(loss), model.state_dict, ours, params)
        scheduler.step(float(loss))
        rates.append((ours.param_groups[0]["lr"], theirs.param_groups[0]["lr"]))
    assert [a for a, _ in rates] == pytest.approx([b for _, b in rates], rel=1e-12)
    assert rates[-1][0] < params.learning_rate  # the sequence did reach plateaus
