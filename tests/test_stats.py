"""Intervals over seeds × cells against scipy's t procedures and simulated coverage."""

import numpy as np
import pytest
from scipy import stats

from scae.evaluation.stats import bonferroni, crossed_mean_difference


def _crossed(rng, n_seeds, n_cells, seed_sd, cell_sd, residual_sd):
    """d_sc = a_s + b_c + e_sc with true mean 0."""
    return (
        rng.normal(0, seed_sd, (n_seeds, 1))
        + rng.normal(0, cell_sd, (1, n_cells))
        + rng.normal(0, residual_sd, (n_seeds, n_cells))
    )


def _cell_only_interval(d, level=0.95):
    """What comparisons.tsv used to do: average the seeds per cell, then a t-interval over
    cells (the percentile bootstrap it used agrees with this to a few %)."""
    per_cell = d.mean(axis=0)
    return stats.ttest_1samp(per_cell, 0).confidence_interval(level)


def test_seed_offsets_of_opposite_sign_give_interval_containing_zero():
    rng = np.random.default_rng(0)
    cells = rng.normal(0, 0.01, 400)
    d = np.vstack([0.05 + cells, -0.03 + cells]) + rng.normal(0, 0.002, (2, 400))
    difference = crossed_mean_difference(d)
    low, high = difference.interval(0.95)
    assert difference.mean == pytest.approx(0.01, abs=1e-3)
    assert low < 0 < high
    assert difference.p_value() > 0.05
    old = _cell_only_interval(d)
    assert old.low > 0  # the cell-only interval calls a seed artefact significant


def test_seed_dominated_table_is_the_t_interval_over_seed_means():
    seed_effects = np.array([0.02, 0.05, 0.03])
    d = np.repeat(seed_effects[:, None], 50, axis=1)  # no cell-to-cell variation at all
    difference = crossed_mean_difference(d)
    reference = stats.ttest_1samp(seed_effects, 0)
    expected = reference.confidence_interval(0.9)
    np.testing.assert_allclose(difference.interval(0.9), (expected.low, expected.high))
    assert difference.p_value() == pytest.approx(reference.pvalue, rel=1e-6)


def test_one_seed_is_the_paired_t_over_cells():
    d = np.random.default_rng(1).normal(0.01, 0.1, (1, 300))
    difference = crossed_mean_difference(d)
    reference = stats.ttest_1samp(d[0], 0)
    expected = reference.confidence_interval(0.95)
    np.testing.assert_allclose(difference.interval(0.95), (expected.low, expected.high))
    assert difference.p_value() == pytest.approx(reference.pvalue, rel=1e-6)
    assert difference.n_seeds == 1


def test_cell_dominated_table_is_the_paired_t_over_cell_means():
    """Seeds that agree exactly: only which test cells were drawn varies the mean."""
    cells = np.random.default_rng(2).normal(0.02, 0.1, 200)
    d = np.vstack([cells, cells, cells])
    difference = crossed_mean_difference(d)
    expected = stats.ttest_1samp(cells, 0).confidence_interval(0.95)
    np.testing.assert_allclose(difference.interval(0.95), (expected.low, expected.high))


def test_identical_models_give_zero_and_p_one():
    difference = crossed_mean_difference(np.zeros((3, 100)))
    assert difference.interval(0.95) == (0.0, 0.0) and difference.p_value() == 1.0


@pytest.mark.parametrize("seed_sd, cell_sd", [(0.02, 0.1), (0.05, 0.0), (0.0, 0.1), (0.01, 0.1)])
def test_coverage_is_at_least_nominal(seed_sd, cell_sd):
    rng = np.random.default_rng(3)
    n_reps, level = 1500, 0.95
    covered = old_covered = 0
    for _ in range(n_reps):
        d = _crossed(rng, 3, 100, seed_sd, cell_sd, 0.05)
        low, high = crossed_mean_difference(d).interval(level)
        covered += low <= 0 <= high
        old = _cell_only_interval(d, level)
        old_covered += old.low <= 0 <= old.high
    # binomial sd of the coverage estimate ≈ 0.0056
    assert covered / n_reps >= level - 0.015
    if seed_sd >= 0.05:  # ignoring seeds fails exactly where they matter
        assert old_covered / n_reps < 0.8


def test_p_value_inverts_the_interval():
    d = _crossed(np.random.default_rng(4), 3, 80, 0.01, 0.05, 0.05) + 0.02
    difference = crossed_mean_difference(d)
    p = difference.p_value()
    assert 0 < p < 1
    low, high = difference.interval(1 - p)
    assert min(abs(low), abs(high)) == pytest.approx(0, abs=1e-8)


def test_bonferroni_multiplies_by_family_size():
    np.testing.assert_allclose(bonferroni(np.array([0.01, 0.2, 0.5])), [0.03, 0.6, 1.0])
