"""FusedAdam against torch.optim.Adam: the same updates, and a state that round-trips."""

import copy

import pytest
import torch

from scae.module._kernels import FusedAdam
from scae.train.optim import adam


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(30, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 30)
    )


def _train(model, optimizer, steps: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 30, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        ((model(x) - x) ** 2).mean().backward()
        optimizer.step()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_bitwise_equal_to_torch_fused_adam(weight_decay):
    ours, theirs = _model(0), _model(0)
    _train(ours, FusedAdam(ours.parameters(), lr=3e-3, weight_decay=weight_decay), 25)
    _train(
        theirs,
        torch.optim.Adam(theirs.parameters(), lr=3e-3, weight_decay=weight_decay, fused=True),
        25,
    )
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)


def test_close_to_torch_reference_adam():
    """Against the textbook (single-tensor, unfused) implementation."""
    ours, theirs = _model(0), _model(0)
    _train(ours, FusedAdam(ours.parameters(), lr=1e-3, weight_decay=1e-3), 25)
    _train(
        theirs, torch.optim.Adam(theirs.parameters(), lr=1e-3, weight_decay=1e-3, foreach=False), 25
    )
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_parameters_without_gradient_are_left_alone():
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = FusedAdam([used, unused], lr=0.1)
    (used * torch.arange(3.0)).sum().backward()
    optimizer.step()
    assert torch.equal(unused, torch.ones(3))
    assert optimizer.steps[1].item() == 0 and optimizer.steps[0].item() == 1
    assert used[0].item() == 1.0 and used[1].item() < 1.0  # zero gradient: no move


def test_state_dict_round_trip_continues_exactly():
    straight = _model(0)
    _train(straight, FusedAdam(straight.parameters(), lr=3e-3), 20)

    first = _model(0)
    optimizer = FusedAdam(first.parameters(), lr=3e-3)
    _train(first, optimizer, 10)
    saved = copy.deepcopy({"model": first.state_dict(), "optimizer": optimizer.state_dict()})
    resumed = _model(5)  # different initial weights, overwritten by the saved state
    resumed.load_state_dict(saved["model"])
    optimizer = FusedAdam(resumed.parameters(), lr=3e-3)
    optimizer.load_state_dict(saved["optimizer"])
    generator_state = torch.Generator().manual_seed(1)
    for _ in range(10):  # the minibatches the first run would have seen next
        torch.randn(32, 30, generator=generator_state)
    for _ in range(10):
        x = torch.randn(32, 30, generator=generator_state)
        optimizer.zero_grad()
        ((resumed(x) - x) ** 2).mean().backward()
        optimizer.step()
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()):
        assert torch.equal(a, b)


def test_mismatched_state_is_refused():
    optimizer = FusedAdam(_model(0).parameters(), lr=1e-3)
    state = optimizer.state_dict()
    with pytest.raises(ValueError, match="holds 3 tensors"):
        optimizer.load_state_dict({**state, "exp_avg": state["exp_avg"][:3]})


def test_falls_back_to_torch_where_no_fused_kernel():
    params = list(_model(0).parameters())
    assert isinstance(adam(params, torch.device("cpu"), lr=1e-3), FusedAdam)
    assert isinstance(adam(params, torch.device("meta"), lr=1e-3), torch.optim.Adam)


def _fused_adam_with_new_signature(*args, **kwargs):
    """What a torch release that re-signs the private op would present."""
    raise TypeError("_fused_adam_() got an unexpected keyword argument 'beta1'")


def _fused_adam_that_does_nothing(*args, **kwargs):
    """An op of the same name and signature whose meaning changed (here: no update)."""


@pytest.mark.parametrize("patch", ["missing", "re-signed", "changed meaning"])
def test_without_a_working_private_kernel_training_runs_on_torch_fused_adam(
    patch, monkeypatch, caplog
):
    if patch == "missing":
        monkeypatch.delattr(torch, "_fused_adam_")
    else:
        monkeypatch.setattr(
            torch,
            "_fused_adam_",
            _fused_adam_with_new_signature
            if patch == "re-signed"
            else _fused_adam_that_does_nothing,
        )
    ours, theirs = _model(0), _model(0)
    with caplog.at_level("INFO", logger="scae"):
        optimizer = adam(ours.parameters(), torch.device("cpu"), lr=3e-3, weight_decay=1e-2)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"]
    assert "missing or changed" in caplog.text
    monkeypatch.undo()  # the reference runs on the real torch
    _train(ours, optimizer, 25)
    _train(
        theirs, torch.optim.Adam(theirs.parameters(), lr=3e-3, weight_decay=1e-2, fused=True), 25
    )
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)


def test_the_probe_accepts_the_real_kernel():
    from scae.module._kernels import fused_kernel_works

    assert fused_kernel_works(torch.device("cpu"))
