"""Ranks as a dimension: the rank table, its crossing, intervals simultaneous over ranks, and
two data sets with a known answer (a nonlinear curve, where an autoencoder must beat PCA at
rank 2, and linear low-rank data, where PCA at the true rank must not lose)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scae
from scae.evaluation.answer import answer
from scae.evaluation.baselines import baseline_outputs
from scae.evaluation.markdown import crossing_sentence, markdown_summary
from scae.evaluation.metrics import per_cell_metrics
from scae.evaluation.ranks import crossing, rank_comparisons, rank_table
from scae.evaluation.stats import crossed_mean_difference
from scae.evaluation.summary import aggregate

# --------------------------------------------------------------------------------------------
# the crossing, on tables built by hand


def _verdicts(by_rank: dict[int, str]) -> pd.DataFrame:
    return pd.DataFrame({"rank": list(by_rank), "verdict": list(by_rank.values())})


@pytest.mark.parametrize(
    "verdicts, expected",
    [
        ({2: "better", 4: "better", 8: "no difference", 16: "worse", 32: "worse"}, (4, 16)),
        ({2: "better", 4: "better", 8: "better"}, (8, None)),
        ({2: "worse", 4: "worse"}, (None, 2)),
        ({2: "no difference", 4: "no difference"}, (None, None)),
        ({2: "no difference", 4: "better", 8: "worse", 16: "better"}, (16, 8)),  # not monotone
        ({32: "worse", 2: "better", 8: "better"}, (8, 32)),  # order of rows does not matter
    ],
)
def test_crossing_is_the_largest_better_and_the_smallest_worse_rank(verdicts, expected):
    assert crossing(_verdicts(verdicts)) == expected


def test_crossing_sentence_names_both_ends_ties_and_a_double_crossing():
    text = crossing_sentence(_verdicts({2: "better", 8: "no difference", 32: "worse"}))
    assert "up to k = 2" in text and "PCA is better from k = 32" in text
    assert "tied at k = 8" in text and "not one crossing" not in text
    assert "beats PCA at no rank" in crossing_sentence(_verdicts({2: "worse", 4: "worse"}))
    assert "PCA is better at no rank" in crossing_sentence(_verdicts({2: "better", 4: "better"}))
    double = crossing_sentence(_verdicts({2: "worse", 8: "better"}))
    assert "not one crossing" in double


@pytest.mark.parametrize(
    "verdict, says", [("worse", "PCA better"), ("better", "autoencoder better"), ("", "no verdict")]
)
def test_one_rank_names_no_crossing_and_says_how_to_find_one(verdict, says):
    text = crossing_sentence(_verdicts({32: verdict}))
    assert text == (
        f"**Crossing:** one rank only (k = 32: {says}); list ranks in `model.latent_dim` "
        "(e.g. [4, 8, 16, 32]) to find the crossing."
    )
    assert "at no rank" not in text and "from k =" not in text


# --------------------------------------------------------------------------------------------
# the rank table and its intervals


def _cells(n):
    return [f"c{i}" for i in range(n)]


def _table(cells, centred):
    """A per-cell table (the paired family also compares cosine and mse)."""
    return pd.DataFrame(
        {"cell": cells, "centred_cosine": centred, "cosine": centred, "mse": 1 - centred}
    )


def _runs_at(rank, ae_shift, rng, n_cells=300, seeds=(0, 1, 2)):
    """Per-cell tables at one rank: mse and cosine autoencoders and PCA (cosine 0.05 below
    mse), the autoencoder ``ae_shift`` above PCA on every cell, plus tidy rows."""
    cells = _cells(n_cells)
    pca = rng.uniform(0.2, 0.6, n_cells)
    runs = {("baseline_pca", None): _table(cells, pca)}
    rows = [
        ("d", "baseline", "baseline_pca", rank, np.nan, "centred_cosine_mean", pca.mean()),
        (
            "d",
            "baseline",
            "baseline_pca",
            rank,
            np.nan,
            "train_centred_cosine_mean",
            pca.mean() + 0.01,
        ),
    ]
    for loss, offset in (("mse", 0.0), ("cosine", -0.05)):
        for seed in seeds:
            values = pca + ae_shift + offset + rng.normal(0, 0.01, n_cells)
            runs[(loss, seed)] = _table(cells, values)
            rows.append(
                ("d", "autoencoder", loss, rank, seed, "centred_cosine_mean", values.mean())
            )
            rows.append(
                (
                    "d",
                    "autoencoder",
                    loss,
                    rank,
                    seed,
                    "train_centred_cosine_mean",
                    values.mean() + 0.03,
                )
            )
    return runs, rows


def _ranked(shifts: dict[int, float]):
    rng = np.random.default_rng(0)
    per_cell, rows = {}, []
    for rank, shift in shifts.items():
        per_cell[rank], rank_rows = _runs_at(rank, shift, rng)
        rows += rank_rows
    mean_profile = _table(_cells(300), np.zeros(300))
    for runs in per_cell.values():
        runs[("baseline_mean", None)] = mean_profile
    rows.append(("d", "baseline", "baseline_mean", np.nan, np.nan, "centred_cosine_mean", 0.0))
    tidy = pd.DataFrame(
        rows, columns=["dataset", "kind", "model", "rank", "seed", "metric", "value"]
    )
    return per_cell, tidy


def test_rank_table_reads_each_rank_against_pca_at_that_rank():
    per_cell, tidy = _ranked({2: 0.08, 8: 0.0, 32: -0.08})
    stats = aggregate(tidy)
    comparisons = rank_comparisons(per_cell, stats)
    table = rank_table(stats, comparisons, "centred_cosine_mean").set_index("rank")
    assert table["verdict"].to_dict() == {2: "better", 8: "no difference", 32: "worse"}
    assert (table["best"] == "mse").all()  # cosine is 0.05 below mse at every rank
    assert table.loc[2, "mean_difference"] == pytest.approx(0.08, abs=0.005)
    assert table.loc[2, "best_train"] == pytest.approx(table.loc[2, "best_mean"] + 0.03)
    assert table.loc[32, "pca_train"] == pytest.approx(table.loc[32, "pca_mean"] + 0.01)
    assert crossing(table.reset_index()) == (2, 32)
    # each rank's own answer family compares with that rank's PCA, and the mean profile
    # (no rank) is the reference at every rank
    answer = comparisons[comparisons["family"] == "answer"]
    assert sorted(answer["rank"].unique()) == [2, 8, 32]
    assert (
        answer.groupby("rank")["reference"].apply(set) == {"mse", "baseline_pca", "baseline_mean"}
    ).all()


def test_the_rank_table_shows_a_peer_beside_pca_and_never_as_the_best():
    per_cell, tidy = _ranked({2: 0.08, 32: -0.08})
    peer = [("d", "peer", "scvi", 32, s, "centred_cosine_mean", 0.9 + s / 100) for s in (0, 1)]
    tidy = pd.concat([tidy, pd.DataFrame(peer, columns=tidy.columns)], ignore_index=True)
    stats = aggregate(tidy)
    table = rank_table(stats, rank_comparisons(per_cell, stats), "centred_cosine_mean")
    table = table.set_index("rank")
    assert (table["best"] == "mse").all()  # 0.9 beats every loss, yet is not "best"
    assert table.loc[32, "scvi_mean"] == pytest.approx(0.905)
    assert np.isnan(table.loc[2, "scvi_mean"])  # not run at k = 2
    text = markdown_summary(tidy, rank_comparisons(per_cell, stats), "d", reference_rank=32)
    assert "| verdict | scVI test |" in text and "| PCA better | 0.9050 |" in text
    assert "autoencoder better | – |" in text


def test_rank_intervals_are_simultaneous_over_the_ranks():
    per_cell, tidy = _ranked({2: 0.01, 8: 0.0, 32: -0.01})
    comparisons = rank_comparisons(per_cell, aggregate(tidy), level=0.95)
    family = comparisons[comparisons["family"] == "rank"].set_index("rank")
    assert len(family) == 3
    runs = per_cell[8]
    table = np.vstack(
        [
            runs[("mse", s)]["centred_cosine"] - runs[("baseline_pca", None)]["centred_cosine"]
            for s in (0, 1, 2)
        ]
    )
    low, high = crossed_mean_difference(table).interval(1 - 0.05 / 3)  # Bonferroni over 3
    assert (family.loc[8, "ci_low"], family.loc[8, "ci_high"]) == pytest.approx((low, high))
    narrow = crossed_mean_difference(table).interval(0.95)
    assert high - low > narrow[1] - narrow[0]


def test_markdown_has_the_rank_table_one_section_per_rank_and_the_figures():
    per_cell, tidy = _ranked({2: 0.08, 32: -0.08})
    comparisons = rank_comparisons(per_cell, aggregate(tidy))
    text = markdown_summary(tidy, comparisons, "d", reference_rank=32)
    assert "## At which rank does an autoencoder beat PCA?" in text
    assert "| 2 | `mse` |" in text and "autoencoder better |" in text and "PCA better |" in text
    assert (
        "**Crossing:** the best autoencoder beats PCA at the same rank up to k = 2; PCA is "
        "better from k = 32." in text
    )
    assert "## Rank k = 2\n" in text and "## Rank k = 32 (the reference rank" in text
    assert "plots/rank_curve.png" in text and "plots/forest.png" in text
    assert text.count("**Answer:**") == 2
    assert "### k = 2: Ties with the best loss" in text


def test_the_answer_says_when_the_rank_table_places_pca_otherwise():
    per_cell, tidy = _ranked({32: -0.08})
    stats = aggregate(tidy)
    comparisons = rank_comparisons(per_cell, stats)
    pca = stats.loc[stats["model"] == "baseline_pca", "mean"].iloc[0]
    agreeing = answer(stats, comparisons, "d", "centred_cosine_mean")[0]
    assert f"PCA at the same rank ({pca:.4g}) beats it;" in agreeing  # both say PCA better
    assert "rank table" not in agreeing
    # The answer's interval is simultaneous over more rows than the rank table's: with few
    # seeds it can contain 0 where the rank table's does not. Make it so by hand.
    versus_pca = (
        (comparisons["family"] == "answer")
        & (comparisons["model"] == "mse")
        & (comparisons["reference"] == "baseline_pca")
    )
    wide = comparisons.copy()
    wide.loc[versus_pca, ["ci_low", "ci_high", "verdict"]] = [-0.2, 0.01, "no difference"]
    text = answer(stats, wide, "d", "centred_cosine_mean")[0]
    ranked = comparisons[comparisons["family"] == "rank"].iloc[0]
    assert (
        f"it ties with PCA at the same rank ({pca:.4g}) within this answer's 3 simultaneous "
        "intervals ([-0.2000, +0.0100]), while the rank table's interval for the same difference, "
        "simultaneous over the ranks only "
        f"([{ranked['ci_low']:+.4f}, {ranked['ci_high']:+.4f}]), says PCA better; it beats "
        "the training-mean profile" in text
    )


# --------------------------------------------------------------------------------------------
# known answers, through the public API


@pytest.fixture
def one_thread():
    """Small models train faster on one thread (and do not stall on a busy machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _expression_anndata(x: np.ndarray, seed: int) -> ad.AnnData:
    """Cells × genes whose X is ``x`` itself (the expression the models and metrics see);
    the counts layer setup_anndata requires only sets library sizes, unused by ``mse``."""
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(rng.poisson(2.0, x.shape).astype(np.float32))
    adata = ad.AnnData(X=sp.csr_matrix(x.astype(np.float32)), layers={"counts": counts})
    adata.obs_names = [f"cell{i}" for i in range(x.shape[0])]
    adata.var_names = [f"gene{i}" for i in range(x.shape[1])]
    scae.Autoencoder.setup_anndata(adata)
    return adata


def _verdict_at(adata: ad.AnnData, rank: int, seeds=(0, 1)) -> pd.Series:
    """The rank-table row of an ``mse`` autoencoder against PCA, both at ``rank``."""
    split = adata.obs["split"].to_numpy()
    test = np.flatnonzero(split == "test")
    cells = adata.obs_names[test]
    mean, std = adata.var["train_mean"].to_numpy(), adata.var["train_std"].to_numpy()

    def scored(recon):
        table = per_cell_metrics(adata.X[test], recon, mean, std)
        table.insert(0, "cell", cells)
        return table

    runs, rows = {}, []
    for seed in seeds:
        model = scae.Autoencoder(adata, "mse", hidden=(128,), latent_dim=rank, dropout=0.0)
        model.train(
            max_epochs=400, patience=15, batch_size=64, learning_rate=3e-3, seed=seed, device="cpu"
        )
        assert model.stopped_by == "patience"  # converged, not capped
        runs[("mse", seed)] = scored(model.get_reconstruction(indices=test))
        rows.append(
            (
                "d",
                "autoencoder",
                "mse",
                rank,
                seed,
                "centred_cosine_mean",
                runs[("mse", seed)]["centred_cosine"].mean(),
            )
        )
    _, recon = baseline_outputs("pca", adata, rank, 0, max_pca_rank=rank)
    runs[("baseline_pca", None)] = scored(recon)
    rows.append(
        (
            "d",
            "baseline",
            "baseline_pca",
            rank,
            np.nan,
            "centred_cosine_mean",
            runs[("baseline_pca", None)]["centred_cosine"].mean(),
        )
    )
    tidy = pd.DataFrame(
        rows, columns=["dataset", "kind", "model", "rank", "seed", "metric", "value"]
    )
    stats = aggregate(tidy)
    table = rank_table(stats, rank_comparisons({rank: runs}, stats), "centred_cosine_mean")
    return table.iloc[0]


def test_an_autoencoder_beats_pca_at_rank_2_on_a_nonlinear_curve(one_thread):
    """Cells on a 1-D curve t ∈ [0, 1] embedded in 200 genes through Gaussian bumps (gene g
    peaks at its own c_g): one number per cell, but no 2-D linear subspace holds the curve."""
    rng = np.random.default_rng(1)
    t = rng.uniform(0, 1, 1200)
    centres = rng.uniform(0, 1, 200)
    x = 2.0 * np.exp(-((t[:, None] - centres[None, :]) ** 2) / (2 * 0.06**2))
    x += rng.normal(0, 0.05, x.shape)
    row = _verdict_at(_expression_anndata(x, seed=1), rank=2)
    assert row["verdict"] == "better", row.to_dict()
    assert row["best_mean"] > row["pca_mean"] + 0.1, row.to_dict()


def test_pca_at_the_true_rank_does_not_lose_on_linear_low_rank_data(one_thread):
    """x = m + z Wᵀ + ε with rank-4 z Wᵀ and Gaussian noise: PCA at rank 4 is the best rank-4
    reconstruction there is (up to noise), so the autoencoder can at best tie."""
    rng = np.random.default_rng(2)
    z = rng.normal(0, 1, (1200, 4))
    w = rng.normal(0, 0.5, (200, 4))
    x = 1.0 + z @ w.T + rng.normal(0, 0.3, (1200, 200))
    row = _verdict_at(_expression_anndata(x, seed=2), rank=4)
    assert row["verdict"] in ("worse", "no difference"), row.to_dict()
    assert row["pca_mean"] > 0.5  # PCA recovers most of the structure: the test has power
