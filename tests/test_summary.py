"""Aggregation over seeds, paired comparisons, the answer line and the README findings."""

import json

import numpy as np
import pandas as pd
import pytest

from scae.evaluation.findings import answer_record, render
from scae.evaluation.markdown import markdown_summary
from scae.evaluation.summary import (
    aggregate,
    best_loss,
    convergence,
    merge_variants,
    paired_differences,
    wide_summary,
)


def test_wide_summary_keeps_baselines_last():
    tidy = pd.DataFrame(
        {
            "dataset": "d",
            "model": ["mse", "mse", "baseline_pca", "cosine"],
            "kind": ["autoencoder", "autoencoder", "baseline", "autoencoder"],
            "rank": [8, 8, 8, 8],
            "seed": [0, 1, np.nan, 0],
            "metric": "cosine_mean",
            "value": [0.8, 0.81, 0.7, 0.9],
        }
    )
    wide = wide_summary(tidy)
    assert list(wide["model"]) == ["cosine", "mse", "mse", "baseline_pca"]
    assert wide["seed"].isna().tolist() == [False, False, False, True]


def _tidy():
    rows = []
    for seed, (mse_cos, cos_cos) in enumerate([(0.80, 0.70), (0.82, 0.72)]):
        rows += [
            ("d", "autoencoder", "mse", 32, seed, "cosine_mean", mse_cos),
            ("d", "autoencoder", "cosine", 32, seed, "cosine_mean", cos_cos),
            ("d", "autoencoder", "mse", 32, seed, "mse", 0.2),
            ("d", "autoencoder", "cosine", 32, seed, "mse", 0.3),
        ]
    rows += [
        ("d", "baseline", "baseline_pca", 32, np.nan, "cosine_mean", 0.85),
        ("d", "baseline", "baseline_pca", 32, np.nan, "mse", 0.1),
        ("d", "baseline", "baseline_mean", np.nan, np.nan, "cosine_mean", 0.6),
        ("d.mcv", "autoencoder", "mse", 32, 0, "mcv_mse", 0.4),
        ("d.mcv", "autoencoder", "mse", 32, 0, "cosine_mean", 0.1),
        ("d.mcv", "baseline", "baseline_pca", 32, np.nan, "embedding_dim", 32),
        ("d", "baseline", "baseline_pca", 32, np.nan, "embedding_dim", 32),
        ("d.mcv", "baseline", "baseline_pca_mcv_rank", np.nan, np.nan, "embedding_dim", 7),
        ("d.mcv", "baseline", "baseline_pca_mcv_rank", np.nan, np.nan, "mcv_mse", 0.45),
    ]
    return pd.DataFrame(
        rows, columns=["dataset", "kind", "model", "rank", "seed", "metric", "value"]
    )


def test_merge_variants_keeps_only_mcv_metrics_and_new_ranks():
    merged = merge_variants(_tidy())
    assert set(merged["dataset"]) == {"d"}
    mcv = merged[merged["metric"] == "mcv_mse"]
    assert len(mcv) == 2 and set(mcv["value"]) == {0.4, 0.45}
    assert len(merged[merged["metric"] == "cosine_mean"]) == 6  # the variant's cosine dropped
    dims = merged[merged["metric"] == "embedding_dim"].set_index("model")["value"]
    assert dims.to_dict() == {"baseline_pca": 32, "baseline_pca_mcv_rank": 7}  # no duplicate


def test_aggregate_mean_and_sd_over_seeds():
    stats = aggregate(merge_variants(_tidy())).set_index(["model", "metric"])
    assert stats.loc[("mse", "cosine_mean"), "mean"] == pytest.approx(0.81)
    assert stats.loc[("mse", "cosine_mean"), "sd"] == pytest.approx(np.std([0.8, 0.82], ddof=1))
    assert stats.loc[("mse", "cosine_mean"), "n"] == 2


# --------------------------------------------------------------------------------------------
# paired comparisons


def _cells(n, rng):
    return [f"cell{i}" for i in rng.permutation(n)]


def _table(cells, **scores):
    return pd.DataFrame({"cell": cells, **scores})


def test_seed_offsets_of_opposite_sign_are_no_difference():
    """Two seeds whose difference to mse is +0.05 and −0.03 on every cell: the old cell-only
    bootstrap (seeds averaged first) saw +0.01 ± 0.001 and called it better."""
    rng = np.random.default_rng(0)
    cells = _cells(300, rng)
    base = rng.uniform(0.3, 0.6, 300)
    per_cell = {}
    for seed, offset in [(0, 0.05), (1, -0.03)]:
        per_cell[("mse", seed)] = _table(cells, cosine=base, centred_cosine=base, mse=1 - base)
        noisy = base + offset + rng.normal(0, 0.01, 300)
        per_cell[("cosine", seed)] = _table(cells, cosine=noisy, centred_cosine=noisy, mse=1 - base)
    table = paired_differences(per_cell, best="mse")
    row = table.set_index(["family", "model", "reference", "metric"]).loc[
        ("paired", "cosine", "mse", "centred_cosine")
    ]
    assert row["mean_difference"] == pytest.approx(0.01, abs=2e-3)
    assert row["ci_low"] < 0 < row["ci_high"] and row["verdict"] == "no difference"
    assert row["n_seeds"] == 2
    # the old procedure: mean over seeds per cell, percentile bootstrap over cells
    diffs = np.mean([per_cell[("cosine", s)]["centred_cosine"] - base for s in (0, 1)], axis=0)
    boot = rng.choice(diffs, size=(2000, len(diffs))).mean(axis=1)
    assert np.quantile(boot, 0.025) > 0


def test_identical_models_give_no_difference():
    rng = np.random.default_rng(1)
    cells = _cells(200, rng)
    scores = rng.uniform(0.2, 0.8, 200)
    per_cell = {
        (m, s): _table(cells, cosine=scores, centred_cosine=scores, mse=1 - scores)
        for m in ("mse", "mse_cosine")
        for s in (0, 1, 2)
    }
    table = paired_differences(per_cell, best="mse")
    assert (table["mean_difference"] == 0).all() and (table["verdict"] == "no difference").all()
    assert (table["p_value"] == 1).all()


def test_per_cell_tables_pair_by_cell_name_not_row_order():
    rng = np.random.default_rng(2)
    names = [f"c{i}" for i in range(150)]
    truth = dict(zip(names, rng.uniform(0.2, 0.8, 150)))
    gain = dict(zip(names, rng.normal(0.05, 0.02, 150)))
    per_cell, shuffled = {}, {}
    for seed in (0, 1):
        order = list(rng.permutation(names))
        ref = [truth[c] for c in names]
        per_cell[("mse", seed)] = _table(names, cosine=ref, centred_cosine=ref, mse=ref)
        better = [truth[c] + gain[c] for c in order]
        per_cell[("nb", seed)] = _table(order, cosine=better, centred_cosine=better, mse=better)
    table = paired_differences(per_cell, best="nb").set_index(
        ["family", "model", "reference", "metric"]
    )
    row = table.loc[("paired", "nb", "mse", "cosine")]
    assert row["mean_difference"] == pytest.approx(np.mean(list(gain.values())))
    assert row["verdict"] == "better"
    assert table.loc[("paired", "nb", "mse", "mse"), "verdict"] == "worse"  # higher mse
    shuffled = {k: v.sample(frac=1, random_state=3) for k, v in per_cell.items()}
    again = paired_differences(shuffled, best="nb").set_index(table.index.names)
    pd.testing.assert_frame_equal(again, table)


def test_mismatched_test_cells_are_named():
    cells = ["a", "b", "c"]
    per_cell = {
        ("mse", 0): _table(cells, cosine=[1, 2, 3], centred_cosine=[1, 2, 3], mse=[1, 2, 3]),
        ("nb", 0): _table(
            ["a", "b", "x"], cosine=[1, 2, 3], centred_cosine=[1, 2, 3], mse=[1, 2, 3]
        ),
    }
    with pytest.raises(
        ValueError,
        match=r"per-cell scores of nb seed 0 cover other test "
        r"cells than those of mse seed 0 \(1 missing, 1 extra",
    ):
        paired_differences(per_cell, best="nb")


def test_baselines_are_compared_with_every_seed():
    rng = np.random.default_rng(4)
    cells = _cells(200, rng)
    pca = rng.uniform(0.3, 0.6, 200)
    per_cell = {("baseline_pca", None): _table(cells, cosine=pca, centred_cosine=pca, mse=pca)}
    for seed in (0, 1, 2):
        worse = pca - 0.1 + rng.normal(0, 0.001, 200)
        per_cell[("mse", seed)] = _table(cells, cosine=worse, centred_cosine=worse, mse=worse)
    table = paired_differences(per_cell, best="mse")
    row = table[
        (table["reference"] == "baseline_pca")
        & (table["metric"] == "cosine")
        & (table["family"] == "paired")
    ].iloc[0]
    assert row["n_seeds"] == 3 and row["n_cells"] == 200 and row["verdict"] == "worse"


# --------------------------------------------------------------------------------------------
# the answer


def _scored(means, seeds=(0, 1, 2), n_cells=200, seed_sd=0.002):
    """Tidy rows and per-cell tables for losses with given (centred cosine, mse) per cell."""
    rng = np.random.default_rng(5)
    cells = [f"c{i}" for i in range(n_cells)]
    spread = rng.normal(0, 0.05, n_cells)
    rows, per_cell = [], {}
    for model, (centred, mse) in means.items():
        baseline = model.startswith("baseline_")
        for seed in [None] if baseline else seeds:
            shift = 0 if baseline else rng.normal(0, seed_sd)
            c = centred + shift + spread + rng.normal(0, 0.005, n_cells)
            e = mse - shift + spread + rng.normal(0, 0.005, n_cells)
            per_cell[(model, seed)] = _table(cells, cosine=c, centred_cosine=c, mse=e)
            for metric, values in [("centred_cosine_mean", c), ("mse", e), ("cosine_mean", c)]:
                rank = np.nan if model == "baseline_mean" else 32
                rows.append(
                    (
                        "d",
                        "baseline" if baseline else "autoencoder",
                        model,
                        rank,
                        np.nan if seed is None else seed,
                        metric,
                        float(values.mean()),
                    )
                )
    tidy = pd.DataFrame(
        rows, columns=["dataset", "kind", "model", "rank", "seed", "metric", "value"]
    )
    return tidy, per_cell


MEANS = {
    "mse": (0.425, 0.30),
    "mse_cosine": (0.426, 0.40),
    "cosine": (0.35, 0.31),
    "baseline_pca": (0.47, 0.29),
    "baseline_mean": (0.0, 0.5),
}


def _markdown(primary, runs=None):
    tidy, per_cell = _scored(MEANS)
    best = best_loss(aggregate(tidy), primary)
    comparisons = paired_differences(per_cell, best, primary, rank=32)
    return markdown_summary(tidy, comparisons, "d", primary, runs), comparisons


def test_answer_names_ties_and_uses_the_primary_metric():
    text, _ = _markdown("centred_cosine_mean")
    answer = next(line for line in text.splitlines() if line.startswith("**Answer:**"))
    assert "ranked by `centred_cosine_mean`" in answer
    assert "the best loss is `mse_cosine`" in answer
    assert "tied with it" in answer and "`mse` (0.42" in answer
    assert "`cosine`" not in answer  # 0.075 lower: worse, not tied
    assert "PCA at the same rank (0.467" in answer and ") beats it" in answer
    assert "it beats the training-mean profile" in answer
    record = answer_record("summary.md", text)
    assert record == {
        "dataset": "d",
        "primary_metric": "centred_cosine_mean",
        "best": "mse_cosine",
        "tied": ["mse"],
        "rank": 32,
        "reference": True,
    }

    text, _ = _markdown("mse")  # lower is better: mse wins, cosine (0.31) ties, mse_cosine not
    answer = next(line for line in text.splitlines() if line.startswith("**Answer:**"))
    assert "ranked by `mse` (lower is better" in answer and "best loss is `mse`" in answer
    assert "`cosine` (0.3" in answer and "mse_cosine" not in answer


def test_answer_says_two_seeds_cannot_tell_what_they_tie():
    tidy, per_cell = _scored(MEANS, seeds=(0, 1))
    best = best_loss(aggregate(tidy), "centred_cosine_mean")
    comparisons = paired_differences(per_cell, best, "centred_cosine_mean", rank=32)
    text = markdown_summary(tidy, comparisons, "d", "centred_cosine_mean")
    answer = next(line for line in text.splitlines() if line.startswith("**Answer:**"))
    # 0.075 below the best is worse at three seeds (above); at two, t with 1 df ties it
    assert "`cosine` (0.3" in answer and "mean over 2 seeds" in answer
    assert "Two seeds: the seed part of every interval has one degree of freedom" in answer
    assert answer_record("summary.md", text)["tied"] == ["cosine", "mse"]

    three, _ = _markdown("centred_cosine_mean")
    assert "Two seeds:" not in three


def test_answer_flags_runs_that_did_not_converge():
    runs = convergence(
        {
            ("d", 32, "mse", 0): pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [3, 2, 1]}),
            ("d.mcv", 32, "mse", 0): pd.DataFrame({"epoch": [1, 2, 3], "val_loss": [1, 2, 3]}),
        },
        max_epochs=3,
        patience=2,
    )
    assert runs["converged"].tolist() == [False, True]  # best epoch 3 of 3; 1 of 3 (stopped)
    text, _ = _markdown("centred_cosine_mean", runs)
    answer = next(line for line in text.splitlines() if line.startswith("**Answer:**"))
    assert "Not converged (" in answer and "d: `mse` seed 0." in answer
    assert "d.mcv" not in answer


def test_convergence_rule():
    def history(val_loss):
        return pd.DataFrame({"epoch": range(1, len(val_loss) + 1), "val_loss": val_loss})

    runs = convergence(
        {
            ("d", 8, "a", 0): history([5, 4, 3, 2, 1]),  # still improving at max_epochs
            ("d", 8, "b", 0): history([5, 4, 3, 3.5, 3.2]),  # best epoch 3 > 5 − 3: not converged
            ("d", 8, "c", 0): history(
                [5, 4, 4.1, 4.2, 4.3]
            ),  # best epoch 2 = 5 − 3: patience ran out
            ("d", 8, "e", 0): history([5, 4, 4.5]),  # stopped early
        },
        max_epochs=5,
        patience=3,
    ).set_index("model")
    assert runs["converged"].to_dict() == {"a": False, "b": False, "c": True, "e": True}
    assert runs.loc["b", "best_epoch"] == 3 and runs.loc["e", "epochs"] == 3


def test_markdown_marks_best_single_seed_columns_and_mcv_caveat():
    tidy = merge_variants(_tidy())
    extra = pd.DataFrame(
        [("d", "baseline", "baseline_mean", np.nan, np.nan, "mcv_mse", 0.3)], columns=tidy.columns
    )
    text = markdown_summary(
        pd.concat([tidy, extra], ignore_index=True), pd.DataFrame(), "d", "cosine_mean"
    )
    assert "| baseline_pca | **0.85** | **0.1** |" in text
    assert "| mse | 0.81 ± 0.014 |" in text
    assert "2 seeds for cosine_mean, mse; 1 seed for mcv_mse" in text
    assert "| mcv_mse (1 seed) |" in text
    assert "`mcv_mse`: the training-mean profile, which cannot denoise, beats every model" in text
    assert "`baseline_pca_mcv_rank`: PCA at the rank k = 7" in text and "k = 32" in text
    assert "best loss is `mse` (0.81); PCA at the same rank scores 0.85" in text


def _rank_tables(folder, ranks=(32,), peers=None, recipes=None):
    """The ranks.tsv, summary.tsv and metrics.tsv a summary.md has beside it (``peers``: name →
    means; ``recipes``: recipe setting → value, as the runs record them)."""
    settings = {"setting_learning_rate": 1e-3, **(recipes or {})}
    pd.DataFrame(
        [("autoencoder", f"setting_{name}", value) for name, value in settings.items()]
        + [("baseline", "centred_cosine_mean", 0.47)],
        columns=["kind", "metric", "value"],
    ).to_csv(folder / "metrics.tsv", sep="\t", index=False)
    pd.DataFrame(
        {
            "rank": list(ranks),
            "best": "mse",
            "best_mean": 0.44,
            "pca_mean": 0.47,
            "mean_difference": -0.03,
            "ci_low": -0.04,
            "ci_high": -0.02,
            "verdict": ["better"] + ["worse"] * (len(ranks) - 1),
        }
    ).to_csv(folder / "ranks.tsv", sep="\t", index=False)
    runs = [("autoencoder", "mse", 32, 0, 0.44)] + [
        ("peer", name, 32, seed, value)
        for name, values in (peers or {}).items()
        for seed, value in enumerate(values)
    ]
    pd.DataFrame(runs, columns=["kind", "model", "rank", "seed", "centred_cosine_mean"]).to_csv(
        folder / "summary.tsv", sep="\t", index=False
    )


def test_findings_open_with_a_row_per_dataset_peers_beside_the_answer(tmp_path):
    from scae.evaluation.findings import glance

    text, _ = _markdown("centred_cosine_mean")
    recipe = {"pca_path": 1.0, "ema_decay": 0.99}
    for name, ranks, peers in [("a", (4, 32), {"scvi": [0.2, 0.3]}), ("b", (32,), None)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.md").write_text(text)
        _rank_tables(tmp_path / name, ranks, peers, recipe if name == "a" else None)
    # a's previous study run (another recipe): where it crossed stands beside where it does now
    (tmp_path / "a" / "previous").mkdir()
    _rank_tables(tmp_path / "a" / "previous", (2, 4, 32))
    lines = glance([tmp_path / "a" / "summary.md", tmp_path / "b" / "summary.md"]).splitlines()
    assert lines[2].endswith("| best − PCA-k | scVI |")  # only the peers some dataset ran
    assert lines[4] == (
        "| d | `ema_decay 0.99` + `pca_path` | k = 4 | k = 32 | k = 2 / k = 4 | 32 | `mse` 0.4400 "
        "| 0.4700 | -0.0300 [-0.0400, -0.0200] | 0.2500 |"
    )
    assert lines[5].startswith("| d | none | one rank only | one rank only | – | 32 |")
    assert lines[5].endswith("| – |")


def test_findings_copy_tables_and_count_wins_across_datasets(tmp_path):
    text, _ = _markdown("centred_cosine_mean")
    one, two = tmp_path / "one.md", tmp_path / "two.md"
    one.write_text(text)
    _rank_tables(tmp_path)
    record = {
        "dataset": "e",
        "primary_metric": "centred_cosine_mean",
        "best": "mse",
        "tied": [],
        "rank": 32,
        "reference": True,
    }
    two.write_text(text.replace(json.dumps(answer_record(one, text)), json.dumps(record)))
    rendered = render([one, two])
    assert rendered.startswith("**At a glance**")
    assert "## Paired comparisons" not in rendered and "scae-answer" not in rendered
    assert "\n## d: which loss" in rendered and "**Answer:**" in rendered
    assert rendered.strip().endswith(
        "**Across 2 datasets** (by `centred_cosine_mean`; best or statistically tied with the "
        "best): `mse` on 2 (1 best, 1 tied), `mse_cosine` on 1 (1 best, 0 tied); every other "
        "loss on none."
    )


def test_findings_show_another_regime_without_counting_it(tmp_path):
    text, _ = _markdown("centred_cosine_mean")
    one, regime = tmp_path / "one.md", tmp_path / "regime.md"
    one.write_text(text)
    _rank_tables(tmp_path)
    regime.write_text(
        text.replace(
            '"primary_metric": "centred_cosine_mean"', '"primary_metric": "zscored_cosine_mean"'
        )
    )
    rendered = render([one, tmp_path / "one.md"], also=(regime,))
    across = rendered.index("**Across 2 datasets**")
    assert rendered.index("_Source: `" + str(regime)) > across  # shown after the count
    assert across < rendered.index("**Other regimes**") < rendered.index("_Source: `" + str(regime))
    assert "Across 3" not in rendered  # and not counted, though it ranks by another metric


def test_findings_copy_the_figures_next_to_the_page_and_summarize_in_the_readme(tmp_path):
    from scae.evaluation.findings import END, START, main

    text, _ = _markdown("centred_cosine_mean")
    results = tmp_path / "results" / "d"
    (results / "plots").mkdir(parents=True)
    (results / "summary.md").write_text(text)
    _rank_tables(results)
    for figure in ("rank_curve.png", "forest.png"):
        (results / "plots" / figure).write_bytes(b"png " + figure.encode())
    page, readme = tmp_path / "docs" / "findings.md", tmp_path / "README.md"
    page.parent.mkdir()
    for path in (page, readme):
        path.write_text(f"# x\n\n{START}\nold\n{END}\n")
    main([str(page), "--readme", str(readme), str(results / "summary.md")])
    written = page.read_text()
    assert "](figures/d/rank_curve.png)" in written and "](plots/" not in written
    assert (tmp_path / "docs/figures/d/forest.png").read_bytes() == b"png forest.png"
    assert "\nold\n" not in written and "\n### Rank k = 32" in written  # demoted one level
    short = readme.read_text()
    assert "- **d** — one rank only (k = 32: " in short  # no crossing from one rank
    assert "At k = 32: ranked by `centred_cosine_mean`" in short
    assert "[docs/findings.md](docs/findings.md)" in short and "| model |" not in short


def test_findings_tabulate_the_verdicts_of_depth_variants_by_rank(tmp_path):
    from scae.evaluation.findings import MIXED_RECIPES, depth_tables

    text, _ = _markdown("centred_cosine_mean")
    paths = []
    for name, depth, verdicts in [
        ("full", 1.0, ["better", "worse"]),
        ("quarter", 0.25, ["better", "better"]),
        ("other", 1.0, ["worse", "worse"]),
        ("other_half", 0.5, ["worse", "worse"]),
        ("lone", 1.0, ["worse", "worse"]),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        record = answer_record("x", text) | {
            "dataset": name,
            "depth": depth,
            "input": {"other": "other.h5ad", "lone": "lone.h5ad"}.get(name.split("_")[0], "p.h5ad"),
        }
        (folder / "summary.md").write_text(
            text.replace(json.dumps(answer_record("x", text)), json.dumps(record))
        )
        pd.DataFrame({"rank": [2, 32], "verdict": verdicts}).to_csv(
            folder / "ranks.tsv", sep="\t", index=False
        )
        # full depth of p.h5ad trained with the PCA path, every other run without a recipe
        settings = {"setting_pca_path": float(name == "full"), "setting_ema_decay": 0.0}
        pd.DataFrame(
            [("autoencoder", metric, value) for metric, value in settings.items()],
            columns=["kind", "metric", "value"],
        ).to_csv(folder / "metrics.tsv", sep="\t", index=False)
        paths.append(folder / "summary.md")
    tables = depth_tables(paths)
    assert len(tables) == 2  # "lone" ran at one depth only: no table
    first, second = tables
    assert "`p.h5ad`" in first and "`other.h5ad`" in second
    lines = first.splitlines()
    assert lines[-4] == "| 1 | full | `pca_path` | ▲ AE | ▼ PCA | 2 | 32 |"
    assert lines[-3] == "| 0.25 | quarter | none | ▲ AE | ▲ AE | 32 | – |"
    assert lines[-1] == MIXED_RECIPES  # the depths' difference could be the recipe's
    assert second.splitlines()[-1] == "| 0.5 | other_half | none | ▼ PCA | ▼ PCA | – | 2 |"
    assert MIXED_RECIPES not in second


def test_a_depth_variant_says_so_and_records_its_depth():
    tidy, per_cell = _scored(MEANS)
    comparisons = paired_differences(
        per_cell, best_loss(aggregate(tidy), "centred_cosine_mean"), rank=32
    )
    source = {"path": "p.h5ad", "thin": {"fraction": 0.25, "seed": 0}}
    text = markdown_summary(tidy, comparisons, "d", source=source)
    assert "Molecules thinned binomially to a fraction 0.25 of the input's (seed 0)" in text
    assert answer_record("x", text)["depth"] == 0.25
    assert answer_record("x", text)["input"] == "p.h5ad"
    full = markdown_summary(tidy, comparisons, "d", source={"path": "p.h5ad"})
    assert "thinned" not in full and answer_record("x", full)["depth"] == 1.0


def test_the_metric_registry_is_the_one_source_the_schema_and_tables_agree_with():
    import yaml

    from scae.evaluation.metrics import METRICS, TUNING_CRITERIA

    from .conftest import REPO

    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())["properties"]
    ranked_by = schema["summary"]["properties"]["primary_metric"]["enum"]
    assert set(ranked_by) == {name for name, m in METRICS.items() if m.per_cell}
    assert set(schema["tune"]["properties"]["criterion"]["enum"]) == set(TUNING_CRITERIA)
    # every metric a run writes that the tables rank is in the registry, direction included
    assert {m: METRICS[m].better for m in ("mse", "poisson_nll", "knn_accuracy")} == {
        "mse": "lower",
        "poisson_nll": "lower",
        "knn_accuracy": "higher",
    }
    assert TUNING_CRITERIA["val_centred_cosine"] == ("val_centred_cosine", True)


def test_the_results_layout_reads_back_what_it_writes():
    from scae import layout

    written = layout.run_file(
        "d.mcv", layout.scope(None), "metrics", "baseline", "mean", ".per_cell.tsv.gz"
    )
    assert written == "results/d.mcv/shared/metrics/baseline/mean.per_cell.tsv.gz"
    run = layout.parse(written)
    assert (run.dataset, run.rank, run.seed, run.label) == ("d.mcv", None, None, "baseline_mean")
    history = layout.history_file("d", layout.scope(8), "nb", "seed3")
    assert history == "results/d/k8/models/nb/seed3/history.tsv"
    run = layout.parse(history)
    assert (run.dataset, run.rank, run.model, run.seed, run.label) == ("d", 8, "nb", 3, "nb")
    assert layout.parse("x/results/d/k32/embeddings/mse/seed0.h5ad").label == "mse"


def _trials(tmp_path, loss, converged):
    """A tuning trials.tsv as the tune stage writes it, read back as the summarize job reads it."""
    table = pd.DataFrame(
        {
            "trial": range(len(converged)),
            "state": ["pruned" if c is None else "complete" for c in converged],
            "epochs": [300 if c is False else 40 for c in converged],
            "best_epoch": [297 if c is False else 32 for c in converged],
            "converged": converged,
        }
    )
    path = tmp_path / f"{loss}.tsv"
    table.to_csv(path, sep="\t", index=False)
    return pd.read_csv(path, sep="\t")


def test_tuning_trials_the_epoch_cap_ended_are_named_and_a_chosen_one_is_marked(tmp_path):
    tidy, per_cell = _scored(MEANS)
    settings = {"learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 128, "dropout": 0.1}
    settings |= {"hidden_1": 128, "tuned": 1}
    runs = tidy[tidy["kind"] == "autoencoder"].drop_duplicates(["model", "seed"])
    tidy = pd.concat(
        [tidy] + [runs.assign(metric=f"setting_{name}", value=v) for name, v in settings.items()],
        ignore_index=True,
    )
    best = best_loss(aggregate(tidy), "centred_cosine_mean")
    comparisons = paired_differences(per_cell, best, "centred_cosine_mean", rank=32)
    tuning = {
        "mse": (_trials(tmp_path, "mse", [True, False, None]), {"trial": 1}),
        "nb": (_trials(tmp_path, "nb", [False, True, False]), {"trial": 1}),
        "mse_cosine": (_trials(tmp_path, "mse_cosine", [True, False]), {"trial": 0}),
        "cosine": (_trials(tmp_path, "cosine", [True, None, True]), {"trial": 2}),
    }
    text = markdown_summary(tidy, comparisons, "d", tuning=tuning)
    assert (
        "**Tuning:** 4 trials ran into the 300-epoch cap still improving: `mse` trial 1 "
        "(**chosen**); `mse_cosine` trial 1; `nb` trials 0, 2. A chosen trial's settings train "
        "every run" in text
    )
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if "| [128] |" in line}
    assert "| yes, **at the cap** |" in rows["| mse"]
    assert rows["| mse_cosine"].endswith("| yes |") and rows["| cosine"].endswith("| yes |")

    unchosen = tuning | {"mse": (tuning["mse"][0], {"trial": 0})}
    text = markdown_summary(tidy, comparisons, "d", tuning=unchosen)
    assert "improving: `mse` trial 1; `mse_cosine` trial 1; `nb` trials 0, 2. Had" in text
    assert "Had they run on, one might have been chosen" in text and "at the cap" not in text

    converged = {loss: (_trials(tmp_path, loss, [True, None]), {"trial": 0}) for loss in tuning}
    text = markdown_summary(tidy, comparisons, "d", tuning=converged)
    assert "**Tuning:**" not in text and "at the cap" not in text
