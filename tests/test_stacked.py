"""Stacked training: a model's weights and scores do not depend on the group it trained in.

The reference is scae.train.fit, one model at a time (its own nn.Linear / nn.BatchNorm1d /
nn.Dropout modules); on the CPU every member of a stack must equal it bitwise: the same
history (every epoch's losses and validation scores), the same best epoch and the same
weights, whatever the member's rank, seed or stopping epoch.
"""

import pytest
import torch

from scae.module.losses import get_loss
from scae.module.network import AutoencoderModule, ModelParams
from scae.module.stacked import StackedAutoencoder
from scae.train.cells import CellData
from scae.train.stacked import fit_stacked
from scae.train.trainer import TrainParams, fit

CPU = torch.device("cpu")
# patience 2 over 12 epochs: members stop at different epochs, so the stack shrinks mid-run
SHORT = TrainParams(batch_size=64, learning_rate=3e-3, max_epochs=12, patience=2)


def _runs(data, loss, ranks=(8, 3), seeds=(0, 1), **kw):
    params = dict(n_genes=data.n_vars, hidden=(64, 32), dropout=0.1, output=get_loss(loss).output)
    return [(ModelParams(**params, latent_dim=k, **kw), s) for s in seeds for k in ranks]


def _assert_same_run(alone, stacked):
    assert stacked.best_epoch == alone.best_epoch
    assert stacked.stopped_by == alone.stopped_by
    assert stacked.history.drop(columns="seconds").equals(alone.history.drop(columns="seconds"))
    mine = stacked.model.state_dict()
    for key, value in alone.model.state_dict().items():
        assert torch.equal(value, mine[key]), key


@pytest.mark.parametrize(
    ("loss", "extra"),
    [
        ("mse", {}),
        ("nb", {}),
        ("zinb", {"dispersion": "gene-cell"}),
        ("cosine_embedding", {}),
        ("poisson", {}),
    ],
)
def test_every_member_equals_its_run_alone(small_data, loss, extra):
    data, spec = CellData(small_data, "none", group_key="cell_type"), get_loss(loss)
    params = spec.parameters()
    runs = _runs(small_data, loss, **extra)
    alone = [fit(data, spec, params, p, SHORT, seed, CPU) for p, seed in runs]
    stopped = {len(result.history) for result in alone}
    stacked = fit_stacked(data, spec, params, runs, SHORT, CPU)
    for one, member in zip(alone, stacked):
        _assert_same_run(one, member)
    # the check covers a stack that shrinks: members stopped at different epochs
    assert len(stopped) > 1 or loss != "mse"


@pytest.mark.parametrize("pca_path", [False, True])
@pytest.mark.parametrize("loss", ["mse", "nb"])
def test_members_equal_their_runs_alone_under_every_recipe(small_data, loss, pca_path):
    data, spec = CellData(small_data, "none"), get_loss(loss)
    recipes = {"ema_decay": 0.9, "count_thinning": 0.3, "input_masking": 0.1}
    train = TrainParams(**{**vars(SHORT), "patience": 1, "max_epochs": 30, **recipes})
    runs = _runs(small_data, loss, pca_path=pca_path)
    alone = [fit(data, spec, {}, p, train, seed, CPU) for p, seed in runs]
    for one, member in zip(alone, fit_stacked(data, spec, {}, runs, train, CPU)):
        _assert_same_run(one, member)
    assert len({len(result.history) for result in alone}) > 1  # the stack shrank


def test_members_of_one_seed_share_a_minibatch_and_still_match(small_data):
    data, spec = CellData(small_data, "zscore"), get_loss("mse")
    runs = _runs(small_data, "mse", ranks=(2, 5, 16), seeds=(3,))
    alone = [fit(data, spec, {}, p, SHORT, seed, CPU) for p, seed in runs]
    for one, member in zip(alone, fit_stacked(data, spec, {}, runs, SHORT, CPU)):
        _assert_same_run(one, member)


def test_a_linear_autoencoder_without_hidden_layers_stacks_too(small_data):
    data, spec = CellData(small_data, "none"), get_loss("nb")
    runs = [
        (ModelParams(n_genes=small_data.n_vars, hidden=(), latent_dim=k, output="nb"), seed)
        for k, seed in ((4, 0), (9, 1))
    ]
    alone = [fit(data, spec, {}, p, SHORT, seed, CPU) for p, seed in runs]
    for one, member in zip(alone, fit_stacked(data, spec, {}, runs, SHORT, CPU)):
        _assert_same_run(one, member)


def test_stacks_of_a_given_size_give_the_same_runs(small_data):
    data, spec = CellData(small_data, "none"), get_loss("mse")
    runs = _runs(small_data, "mse", ranks=(8, 3), seeds=(0, 1))
    whole = fit_stacked(data, spec, {}, runs, SHORT, CPU)
    pairs = fit_stacked(data, spec, {}, runs, SHORT, CPU, stack_size=3)
    for a, b in zip(whole, pairs):
        _assert_same_run(a, b)


@pytest.mark.parametrize("train", [SHORT, TrainParams(**{**vars(SHORT), "ema_decay": 0.9})])
def test_a_killed_group_resumes_bitwise(small_data, tmp_path, monkeypatch, train):
    data, spec = CellData(small_data, "none"), get_loss("nb")
    runs = _runs(small_data, "nb")
    straight = fit_stacked(data, spec, {}, runs, train, CPU)

    import scae.train.stacked as stacked_module

    real = stacked_module._validation_scores
    calls = {"n": 0}

    def dies_in_epoch_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    checkpoint = tmp_path / "group.pt"
    monkeypatch.setattr(stacked_module, "_validation_scores", dies_in_epoch_5)
    with pytest.raises(KeyboardInterrupt):
        fit_stacked(data, spec, {}, runs, train, CPU, checkpoint, checkpoint_interval=0)
    monkeypatch.setattr(stacked_module, "_validation_scores", real)
    saved = torch.load(checkpoint, weights_only=True)
    assert [state["epoch"] for state in saved["states"]] == [4] * len(runs)
    resumed = fit_stacked(data, spec, {}, runs, train, CPU, checkpoint)
    for a, b in zip(straight, resumed):
        _assert_same_run(a, b)
    # a checkpoint of other runs is ignored, not loaded
    other = fit_stacked(data, spec, {}, runs[:2], train, CPU, checkpoint)
    for a, b in zip(straight[:2], other):
        _assert_same_run(a, b)


def test_a_stopped_member_leaves_the_stack(small_data):
    torch.manual_seed(0)
    members = [AutoencoderModule(p) for p, _ in _runs(small_data, "nb", ranks=(3, 8), seeds=(0,))]
    stack = StackedAutoencoder(members)
    before = stack.parameters
    moves = stack.keep([1])
    assert stack.size == 1 and stack.ranks == [8]
    # one move per tensor the optimiser held; the dropped member's own tensors are dropped
    assert [old for old, _ in moves] == before
    dropped = [old for old, index in moves if index is None]
    assert dropped and all(old.shape[0] != 2 or old.dim() == 1 for old in dropped)
    assert sum(t.numel() for t in stack.parameters) < 0.6 * sum(t.numel() for t in before)
    kept = stack.member_state(0)
    for key, value in members[1].state_dict().items():
        assert torch.equal(value, kept[key]), key


def test_members_must_share_the_architecture(small_data):
    a = AutoencoderModule(ModelParams(n_genes=small_data.n_vars, hidden=(64,), latent_dim=4))
    b = AutoencoderModule(ModelParams(n_genes=small_data.n_vars, hidden=(32,), latent_dim=4))
    with pytest.raises(ValueError, match="share their architecture"):
        StackedAutoencoder([a, b])


@pytest.mark.workflow
def test_the_workflow_gives_the_same_results_with_one_model_per_job(tmp_path):
    """train_ranks (a seed's ranks stacked in one job) against one job per model: the same
    models, so byte-identical tables (summary.tsv, metrics.tsv, ranks.tsv) and weights; with
    three training recipes on, read from the config as a user sets them."""
    import yaml

    from .conftest import run_snakemake, write_small_workflow_config

    results = {}
    for mode in ("ranks", "one"):
        workdir = tmp_path / mode
        config = write_small_workflow_config(workdir, ["mse", "nb"], [0, 1])
        settings = yaml.safe_load(config.read_text())
        settings["model"]["latent_dim"] = [2, 8]
        settings["train"]["models_per_job"] = mode
        settings["train"] |= {"ema_decay": 0.9, "count_thinning": 0.2}
        settings["model"]["pca_path"] = True
        settings["tune"] = {"enabled": False}
        settings["mcv"] = {"enabled": False}
        config.write_text(yaml.safe_dump(settings))
        run_snakemake(workdir, config, "--cores", "2", "results/pbmc_small/summary.tsv")
        results[mode] = workdir / "results" / "pbmc_small"
    logs = tmp_path / "ranks" / "logs" / "pbmc_small"
    assert sorted(p.name for p in (logs / "train" / "nb").iterdir()) == ["seed0.log", "seed1.log"]
    assert not (tmp_path / "one" / "logs" / "pbmc_small" / "train").exists()
    for table in ("summary.tsv", "metrics.tsv", "ranks.tsv"):
        ranks, one = (results[mode] / table for mode in ("ranks", "one"))
        assert ranks.read_bytes() == one.read_bytes(), table
    text = (results["ranks"] / "summary.md").read_text()
    assert "| tuned | ema_decay | count_thinning | pca_path |" in text
    assert "| no | 0.9 | 0.2 | 1 |" in text
    for rank, loss, seed in ((2, "nb", 1), (8, "mse", 0)):
        files = [
            results[mode] / f"k{rank}" / "models" / loss / f"seed{seed}" / "model.pt"
            for mode in ("ranks", "one")
        ]
        stacked, alone = (torch.load(f, weights_only=True)["state_dict"] for f in files)
        assert alone["pca_path.encoder_weight"].shape[0] == rank  # the PCA path, at its rank
        for key, value in alone.items():
            assert torch.equal(value, stacked[key]), (rank, loss, seed, key)


def test_adam_steps_each_model_of_a_stacked_tensor_as_its_own():
    """Fused Adam over a (2, 13) stack equals each model's (13,) tensor stepped alone, bitwise.

    Stepped as one 26-element tensor, the first model's elements fall where the kernel's
    vectorised body computes them; alone, 13 elements are mostly its tail, and the two round
    apart (measured on torch 2.13's CPU kernel: without the split the first model differs)."""
    from scae.module._kernels import FusedAdam

    generator = torch.Generator().manual_seed(0)
    start = torch.randn(2, 13, generator=generator)
    grads = [torch.randn(2, 13, generator=generator) * 1e-3 for _ in range(20)]
    stacked = start.clone().requires_grad_()
    together = FusedAdam([stacked], lr=3e-3, stacked=[True])
    alone = [start[m].clone().requires_grad_() for m in range(2)]
    optimizers = [FusedAdam([p], lr=3e-3) for p in alone]
    for grad in grads:
        stacked.grad = grad.clone()
        together.step()
        for m, (param, optimizer) in enumerate(zip(alone, optimizers)):
            param.grad = grad[m].clone()
            optimizer.step()
    for m in range(2):
        assert torch.equal(stacked.detach()[m], alone[m].detach())
