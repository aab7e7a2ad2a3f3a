"""Every loss against an independent reference (torch's own losses, scipy's distributions)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from scipy import stats

from scae.module.batch import Batch, DecoderOutput
from scae.module.likelihoods import nb_nll, poisson_nll, zinb_nll
from scae.module.losses import LOSSES, cosine_similarity, get_loss, sample_negatives
from scae.registry import LOSS_NEEDS

PARAMS = {
    "mse": {},
    "cosine": {},
    "cosine_embedding": {"margin": 0.1, "negatives_per_cell": 3},
    "mse_cosine": {"alpha": 0.3},
    "pearson": {},
    "poisson": {},
    "nb": {},
    "zinb": {},
}


@pytest.fixture
def real_batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 30, generator=gen, dtype=torch.float64)
    recon = torch.randn(16, 30, generator=gen, dtype=torch.float64)
    return x, recon


@pytest.fixture
def count_batch():
    rng = np.random.default_rng(1)
    counts = rng.negative_binomial(2, 0.3, size=(12, 25)).astype(np.float64)
    counts[0] = 0  # an all-zero cell
    mu = rng.gamma(2.0, 3.0, size=(12, 25))
    theta = rng.gamma(2.0, 2.0, size=25)
    logits = rng.normal(size=(12, 25))
    return counts, mu, theta, logits


def test_registry_matches_schema_and_count_list():
    schema = yaml.safe_load(open("config/schema.yaml"))
    assert schema["properties"]["losses"]["items"]["enum"] == list(LOSSES)
    assert set(LOSS_NEEDS) == set(LOSSES)
    counts = {name for name, spec in LOSSES.items() if spec.output != "expression"}
    assert counts == {name for name, needs in LOSS_NEEDS.items() if "counts" in needs}
    assert {name for name, spec in LOSSES.items() if spec.uses_counts} == counts
    assert set(PARAMS) == set(LOSSES)


def test_unknown_loss_lists_valid_names():
    with pytest.raises(ValueError, match="valid losses are: mse, cosine, cosine_embedding"):
        get_loss("msee")


def test_cosine_similarity_matches_torch(real_batch):
    x, recon = real_batch
    torch.testing.assert_close(cosine_similarity(recon, x), F.cosine_similarity(recon, x))


def test_mse_and_cosine_match_torch(real_batch):
    x, recon = real_batch
    out, batch = DecoderOutput(expression=recon), Batch(x=x)
    torch.testing.assert_close(get_loss("mse").fn(out, batch, {}).mean(), F.mse_loss(recon, x))
    torch.testing.assert_close(
        get_loss("cosine").fn(out, batch, {}), 1 - F.cosine_similarity(recon, x)
    )
    alpha = 0.3
    expected = alpha * ((recon - x) ** 2).mean(1) + (1 - alpha) * (
        1 - F.cosine_similarity(recon, x)
    )
    torch.testing.assert_close(get_loss("mse_cosine").fn(out, batch, {"alpha": alpha}), expected)


def test_pearson_matches_numpy(real_batch):
    x, recon = real_batch
    loss = get_loss("pearson").fn(DecoderOutput(expression=recon), Batch(x=x), {})
    expected = [1 - np.corrcoef(a, b)[0, 1] for a, b in zip(recon.numpy(), x.numpy())]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-10)


@pytest.mark.parametrize("margin", [-0.5, 0.0, 0.3])
def test_cosine_embedding_matches_torch(real_batch, margin):
    """Our per-cell loss, averaged, equals CosineEmbeddingLoss over the same pairs:
    y = +1 for (x̂_i, x_i) and y = −1 for (x̂_i, x_j) with the sampled negatives j."""
    x, recon = real_batch
    k = 3
    params = {"margin": margin, "negatives_per_cell": k}
    ours = get_loss("cosine_embedding").fn(
        DecoderOutput(expression=recon),
        Batch(x=x, generator=torch.Generator().manual_seed(5)),
        params,
    )
    negatives = sample_negatives(len(x), k, generator=torch.Generator().manual_seed(5))
    x1 = torch.cat([recon, recon.repeat_interleave(k, dim=0)])
    x2 = torch.cat([x, x[negatives.reshape(-1)]])
    y = torch.cat([torch.ones(len(x)), -torch.ones(len(x) * k)]).double()
    reference = torch.nn.CosineEmbeddingLoss(margin=margin)(x1, x2, y)
    torch.testing.assert_close(ours.mean(), reference)


def test_negatives_avoid_self_and_own_group():
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    negatives = sample_negatives(8, 50, groups, torch.Generator().manual_seed(0))
    own = torch.arange(8)[:, None]
    assert (negatives != own).all()
    assert (groups[negatives] != groups[:, None]).all()
    # one group only: falls back to any other cell
    negatives = sample_negatives(4, 20, torch.zeros(4, dtype=torch.long))
    assert (negatives != torch.arange(4)[:, None]).all()


def test_poisson_matches_scipy(count_batch):
    counts, mu, _, _ = count_batch
    ours = poisson_nll(torch.tensor(counts), torch.tensor(mu)).numpy()
    expected = -stats.poisson.logpmf(counts, mu).sum(axis=1)
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_nb_matches_scipy(count_batch):
    counts, mu, theta, _ = count_batch
    ours = nb_nll(torch.tensor(counts), torch.tensor(mu), torch.tensor(theta)).numpy()
    # scipy's nbinom(n, p): n = θ successes, p = θ/(θ+μ) gives mean μ, variance μ + μ²/θ
    expected = -stats.nbinom.logpmf(counts, theta, theta / (theta + mu)).sum(axis=1)
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_zinb_matches_scipy_mixture(count_batch):
    counts, mu, theta, logits = count_batch
    pi = 1 / (1 + np.exp(-logits))
    nb_pmf = stats.nbinom.pmf(counts, theta, theta / (theta + mu))
    mixture = np.where(counts == 0, pi + (1 - pi) * nb_pmf, (1 - pi) * nb_pmf)
    ours = zinb_nll(
        torch.tensor(counts), torch.tensor(mu), torch.tensor(theta), torch.tensor(logits)
    ).numpy()
    np.testing.assert_allclose(ours, -np.log(mixture).sum(axis=1), rtol=1e-6)


def _output_and_batch(name, requires_grad=True):
    gen = torch.Generator().manual_seed(3)
    kind = LOSSES[name].output
    x = torch.rand(6, 8, generator=gen, dtype=torch.float64)
    if kind == "expression":
        out = DecoderOutput(
            expression=torch.randn(
                6, 8, generator=gen, dtype=torch.float64, requires_grad=requires_grad
            )
        )
        return out, Batch(x=x), [out.expression]
    counts = torch.poisson(torch.full((6, 8), 3.0, dtype=torch.float64), generator=gen)
    out = DecoderOutput(
        mu=(torch.rand(6, 8, generator=gen, dtype=torch.float64) * 5 + 0.1).requires_grad_(
            requires_grad
        ),
        theta=(torch.rand(8, generator=gen, dtype=torch.float64) * 3 + 0.2).requires_grad_(
            requires_grad
        ),
        dropout_logits=torch.randn(
            6, 8, generator=gen, dtype=torch.float64, requires_grad=requires_grad
        ),
    )
    inputs = [out.mu] if kind == "poisson" else [out.mu, out.theta]
    if kind == "zinb":
        inputs.append(out.dropout_logits)
    return out, Batch(x=x, counts=counts), inputs


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradcheck(name):
    out, batch, inputs = _output_and_batch(name)
    spec = get_loss(name)

    def loss_of(*tensors):
        fields = dict(vars(out))
        keys = [k for k, v in fields.items() if any(v is t for t in inputs)]
        fields.update(dict(zip(keys, tensors)))
        fresh = Batch(x=batch.x, counts=batch.counts, generator=torch.Generator().manual_seed(0))
        return spec.fn(DecoderOutput(**fields), fresh, PARAMS[name]).sum()

    assert torch.autograd.gradcheck(loss_of, tuple(inputs))


@pytest.mark.parametrize("name", [n for n, s in LOSSES.items() if not s.uses_counts])
def test_expression_losses_finite_on_zero_cells(name):
    x = torch.zeros(4, 10)
    x[1, 3] = 1.0
    recon = torch.zeros(4, 10, requires_grad=True)
    loss = get_loss(name).fn(
        DecoderOutput(expression=recon), Batch(x=x, generator=torch.Generator()), PARAMS[name]
    )
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(recon.grad).all()


@pytest.mark.parametrize("theta", [1e-4, 1.0, 1e6])
def test_count_losses_finite_on_huge_counts_and_extreme_dispersion(theta):
    counts = torch.tensor([[0.0, 1e5, 3.0], [0.0, 0.0, 0.0]])
    mu = torch.tensor([[1e-6, 9e4, 2.0], [0.5, 1e-8, 3.0]], requires_grad=True)
    theta_t = torch.full((3,), theta, requires_grad=True)
    logits = torch.tensor([[20.0, -20.0, 0.0], [-30.0, 30.0, 0.0]], requires_grad=True)
    for value in (
        poisson_nll(counts, mu),
        nb_nll(counts, mu, theta_t),
        zinb_nll(counts, mu, theta_t, logits),
    ):
        value.sum().backward()
        assert torch.isfinite(value).all()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(theta_t.grad).all()
