"""Training recipes (scae.train.recipes): weight averaging, corrupted inputs, the PCA path.

References: torch.optim.swa_utils.AveragedModel for the average; the preprocessed expression
and the binomial's mean for thinning; sklearn's PCA (dense, full SVD) for the PCA path;
stacked members are held bitwise to their runs alone in tests/test_stacked.py, with every
recipe on.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from scae.config import InputError
from scae.module.losses import get_loss
from scae.module.network import AutoencoderModule, ModelParams
from scae.train.cells import CellData
from scae.train.inference import evaluate_split
from scae.train.recipes import WeightAverage, corrupt_inputs, floating_state
from scae.train.trainer import TrainParams, fit, initial_module

CPU = torch.device("cpu")


def test_the_weight_average_is_torchs_ema_of_weights_and_batch_norm_statistics():
    torch.manual_seed(0)
    model = AutoencoderModule(ModelParams(n_genes=30, hidden=(16,), latent_dim=4))
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    average = WeightAverage(0.9)
    live = floating_state(model)
    for _ in range(6):  # a step: weights and running statistics move
        with torch.no_grad():
            for tensors in live.values():
                tensors[0].add_(torch.randn_like(tensors[0]))
        average.update(live)
        reference.update_parameters(model)
    expected = reference.module.state_dict()
    for name, tensors in average.tensors.items():
        torch.testing.assert_close(tensors[0], expected[name], rtol=0, atol=1e-6)
    # applied only within the block
    before = {name: t[0].clone() for name, t in live.items()}
    with average.applied(live):
        assert torch.equal(live["encoder.0.weight"][0], average.tensors["encoder.0.weight"][0])
    for name, tensors in live.items():
        assert torch.equal(tensors[0], before[name])


def test_an_averaged_run_keeps_the_average_it_validated(small_data):
    data, spec = CellData(small_data, "none"), get_loss("mse")
    params = ModelParams(n_genes=small_data.n_vars, hidden=(32,), latent_dim=4)
    train = TrainParams(batch_size=32, learning_rate=1e-2, max_epochs=6, patience=10)
    plain = fit(data, spec, {}, params, train, 0, CPU)
    averaged = fit(data, spec, {}, params, TrainParams(**{**vars(train), "ema_decay": 0.9}), 0, CPU)
    # the same training steps: the live weights' training loss is the same run's ...
    assert averaged.history.train_loss.equals(plain.history.train_loss)
    # ... but the validated, kept model is the average, and it is what was validated
    assert not averaged.history.val_loss.equals(plain.history.val_loss)
    best = averaged.history.set_index("epoch").loc[averaged.best_epoch]
    kept = evaluate_split(averaged.model, data, spec, {}, data.rows("val"), CPU, 0)
    assert kept["val_loss"] == pytest.approx(best.val_loss, rel=1e-6)


def test_thinning_reads_the_preprocessed_expression_at_full_depth_and_is_unbiased(small_data):
    data = CellData(small_data, "none")
    rows = data.rows("train")[:40]
    generator = torch.Generator().manual_seed(0)
    whole = data.thinned_expression(rows, 1.0, generator)
    np.testing.assert_allclose(whole.numpy(), data.x[rows].toarray(), rtol=1e-5, atol=1e-6)
    # E[c'] / (keep · L) = c / L: the normalized expression is unbiased at any depth
    draws = torch.stack([data.thinned_expression(rows, 0.5, generator) for _ in range(400)])
    mean = torch.expm1(draws).mean(0).numpy()
    truth = np.expm1(data.x[rows].toarray())
    assert abs(mean.sum() / truth.sum() - 1) < 0.01
    assert np.corrcoef(mean.ravel(), truth.ravel())[0, 1] > 0.99
    assert not (draws[0].numpy()[data.x[rows].toarray() == 0]).any()  # no molecule appears
    assert (draws[0] == 0).sum() > (whole == 0).sum()  # and some go


def test_masking_zeroes_its_fraction_and_leaves_the_target_whole(small_data):
    data = CellData(small_data, "none")
    rows = data.rows("train")[:64]
    inputs, batch, _ = data.batch(rows, with_counts=False)
    original = inputs.clone()
    masked = corrupt_inputs(inputs, data, rows, 0.0, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(inputs, original) and torch.equal(batch.x, original)
    nonzero = original != 0
    dropped = (masked[nonzero] == 0).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.03)
    assert torch.equal(masked[masked != 0], original[masked != 0])  # no rescaling
    # off: the same tensor back
    assert corrupt_inputs(inputs, data, rows, 0.0, 0.0, torch.Generator()) is inputs


def test_corrupted_training_differs_and_draws_from_seed_and_epoch(small_data):
    data, spec = CellData(small_data, "none"), get_loss("mse")
    params = ModelParams(n_genes=small_data.n_vars, hidden=(32,), latent_dim=4)
    base = {"batch_size": 32, "max_epochs": 3, "patience": 10}
    plain = fit(data, spec, {}, params, TrainParams(**base), 0, CPU)
    for recipe in ({"count_thinning": 0.5}, {"input_masking": 0.2}):
        once = fit(data, spec, {}, params, TrainParams(**base, **recipe), 0, CPU)
        again = fit(data, spec, {}, params, TrainParams(**base, **recipe), 0, CPU)
        assert not once.history.train_loss.equals(plain.history.train_loss), recipe
        assert once.history.drop(columns="seconds").equals(again.history.drop(columns="seconds"))


def _dense_pca(data, rank, scaled):
    """sklearn's full-SVD PCA of the training cells' model inputs (dense: an independent path)."""
    from sklearn.decomposition import PCA

    x = torch.from_numpy(data.x[data.rows("train")].toarray())
    inputs = data.scale(x) if scaled else x
    return PCA(n_components=rank, svd_solver="full").fit(inputs.numpy().astype(np.float64))


@pytest.mark.parametrize("scaling", ["none", "zscore"])
def test_the_pca_path_starts_at_pcas_scores_and_reconstruction(small_data, scaling):
    data, rank = CellData(small_data, scaling), 6
    params = ModelParams(n_genes=small_data.n_vars, hidden=(32,), latent_dim=rank, pca_path=True)
    model = initial_module(data, params, seed=0, device=CPU).eval()
    reference = _dense_pca(data, rank, scaled=True)
    inputs, _, _ = data.batch(data.rows("test"), with_counts=False)
    with torch.no_grad():
        z = model.encode(inputs)
        x_hat = model.decode(z).expression
    scores = reference.transform(inputs.numpy().astype(np.float64))
    # the axes' signs are arbitrary: compare up to each axis' sign
    signs = np.sign(np.sum(z.numpy() * scores, axis=0))
    np.testing.assert_allclose(z.numpy() * signs, scores, atol=2e-4)
    np.testing.assert_allclose(x_hat.numpy(), reference.inverse_transform(scores), atol=2e-4)


def test_a_count_heads_pca_path_predicts_pcas_expression_as_proportions(small_data):
    data, rank = CellData(small_data, "zscore"), 5
    spec = get_loss("nb")
    params = ModelParams(
        n_genes=small_data.n_vars, hidden=(32,), latent_dim=rank, pca_path=True, output="nb"
    )
    model = initial_module(data, params, seed=0, device=CPU).eval()
    rows = data.rows("val")
    inputs, _, library = data.batch(rows, with_counts=False)
    with torch.no_grad():
        mu = model(inputs, library).mu
    # PCA's reconstruction, in log-normalized expression (the z-scoring undone)
    reference = _dense_pca(data, rank, scaled=True)
    recon = data.unscale(
        torch.from_numpy(
            reference.inverse_transform(reference.transform(inputs.numpy())).astype(np.float32)
        )
    )
    proportions = torch.expm1(recon).clamp_min(1e-3)
    proportions /= proportions.sum(1, keepdim=True)
    torch.testing.assert_close(mu / library[:, None], proportions, rtol=2e-3, atol=1e-6)
    assert spec.output == "nb"


def test_a_pca_path_above_the_datas_rank_is_refused_with_the_fix(small_data):
    params = ModelParams(n_genes=small_data.n_vars, hidden=(8,), latent_dim=250, pca_path=True)
    with pytest.raises(InputError, match="model.pca_path: a PCA at latent_dim 250.*lower model"):
        initial_module(CellData(small_data, "none"), params, seed=0, device=CPU)


def test_the_pca_path_is_frozen_and_reads_only_training_cells(small_data):
    data, spec = CellData(small_data, "none"), get_loss("mse")
    params = ModelParams(n_genes=small_data.n_vars, hidden=(32,), latent_dim=4, pca_path=True)
    start = initial_module(data, params, seed=0, device=CPU).pca_path.state_dict()
    train = TrainParams(batch_size=32, learning_rate=1e-2, max_epochs=4, patience=10)
    result = fit(data, spec, {}, params, train, 0, CPU)
    assert result.model.to_latent.weight.abs().sum() > 0  # the residual learnt
    for name, value in result.model.pca_path.state_dict().items():
        assert torch.equal(value, start[name]), name
    # other held-out cells, the same path
    changed = small_data.copy()
    training = (changed.obs["split"].to_numpy() == "train").astype(np.float32)
    changed.X = sp.csr_matrix(sp.diags(training) @ changed.X)
    other = initial_module(CellData(changed, "none"), params, seed=0, device=CPU)
    for name, value in other.pca_path.state_dict().items():  # ARPACK's sums: not to the bit
        torch.testing.assert_close(value, start[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize("setting", ["ema_decay", "count_thinning", "input_masking"])
def test_a_recipe_rate_of_one_is_refused(setting):
    with pytest.raises(InputError, match=f"train.{setting}=1.0"):
        TrainParams(**{setting: 1.0})


def test_the_outputs_name_a_recipe_only_where_it_is_on():
    import pandas as pd

    from scae.evaluation.markdown import settings_table
    from scae.outputs import settings_metrics

    meta = {"learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 128, "dropout": 0.1}
    meta |= {"hidden": [64], "ema_decay": 0.99, "count_thinning": 0.0, "input_masking": 0.0}
    meta |= {"pca_path": False}
    values = settings_metrics(meta)
    assert values["setting_ema_decay"] == 0.99
    assert "setting_count_thinning" not in values and "setting_input_masking" not in values
    assert "setting_pca_path" not in values
    assert settings_metrics({**meta, "pca_path": True})["setting_pca_path"] == 1.0
    stats = pd.DataFrame(
        [{"model": "mse", "metric": name, "mean": value} for name, value in values.items()]
    )
    lines = settings_table(stats)
    assert lines[-3].endswith("| tuned | ema_decay |")
    assert lines[-1] == "| mse | 0.001 | 0 | 128 | 0.1 | [64] | no | 0.99 |"
    off = {k: v for k, v in values.items() if k != "setting_ema_decay"}
    plain = settings_table(stats[stats.metric.isin(off)])
    assert plain[-3].endswith("| tuned |")
