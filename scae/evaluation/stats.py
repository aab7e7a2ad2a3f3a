"""Intervals for a paired difference measured over training seeds × test cells.

Two models are compared on the same test cells under the same training seeds, so their
per-cell differences form a table d (S seeds × N cells) of a *crossed* design: every cell is
scored under every seed. Both dimensions are samples — another seed gives another model,
another split other test cells — so the two-way random-effects model

    d_sc = μ + a_s + b_c + e_sc,   a_s ~ N(0, σ²_seed), b_c ~ N(0, σ²_cell), e_sc ~ N(0, σ²_res)

describes the reported mean difference d̄, with

    Var(d̄) = σ²_seed / S + σ²_cell / N + σ²_res / (S N).

The two-way ANOVA mean squares (one observation per seed and cell)

    MS_seed = N Σ_s (d̄_s· − d̄)² / (S − 1)              E = σ²_res + N σ²_seed
    MS_cell = S Σ_c (d̄_·c − d̄)² / (N − 1)              E = σ²_res + S σ²_cell
    MS_res  = Σ_sc (d_sc − d̄_s· − d̄_·c + d̄)² / ((S − 1)(N − 1))   E = σ²_res

split it into two independent parts: v_seed = MS_seed / (S N) estimates σ²_seed/S + σ²_res/(SN)
with S − 1 degrees of freedom, v_cell = (MS_cell − MS_res)⁺ / (S N) estimates σ²_cell/N with
about N − 1. The interval

    d̄ ± √( t²_{S−1} · v_seed + t²_{N−1} · v_cell ),   t_ν the two-sided quantile of t with ν df,

scales each part by its own quantile: Banerjee's (1960) conservative answer to the
Behrens–Fisher problem. When seeds dominate it is the t-interval over the S per-seed means
(3 seeds: a t with 2 df), when cells dominate the paired t over cells; in between it covers at
least the nominal level (tests/test_stats.py simulates it). With one seed σ²_seed cannot be
estimated: the interval is over cells only (v_cell = MS_cell / N) and says nothing about
another seed. The p-value inverts the interval: the largest α whose 1 − α interval contains 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


@dataclass(frozen=True)
class MeanDifference:
    """Mean of a seeds × cells table of differences and its two variance parts (module doc)."""

    mean: float
    seed_variance: float
    cell_variance: float
    n_seeds: int
    n_cells: int

    def half_width(self, alpha: float) -> float:
        """√(t²_{S−1}·v_seed + t²_{N−1}·v_cell) at two-sided level 1 − ``alpha``."""
        cell = np.sqrt(self.cell_variance) * stats.t.isf(alpha / 2, self.n_cells - 1)
        if self.n_seeds == 1:
            return float(cell)
        seed = np.sqrt(self.seed_variance) * stats.t.isf(alpha / 2, self.n_seeds - 1)
        return float(np.hypot(seed, cell))

    def interval(self, level: float) -> tuple[float, float]:
        """Return the two-sided ``level`` confidence interval of the mean difference."""
        half = self.half_width(1 - level)
        return self.mean - half, self.mean + half

    def p_value(self) -> float:
        """Two-sided p of μ = 0: the α at which the 1 − α interval just reaches 0."""
        if self.seed_variance + self.cell_variance == 0:
            return 1.0 if self.mean == 0 else 0.0
        if self.mean == 0:
            return 1.0

        def excess(log_alpha: float) -> float:
            return self.half_width(10.0**log_alpha) - abs(self.mean)

        if excess(-300) < 0:
            return 0.0
        return float(10.0 ** optimize.brentq(excess, -300, 0, xtol=1e-10))


def crossed_mean_difference(d: np.ndarray) -> MeanDifference:
    """d̄ and its variance parts from an S × N table of paired differences (module doc)."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"need a seeds × cells table with at least 2 cells, got shape {d.shape}")
    n_seeds, n_cells = d.shape
    grand = float(d.mean())
    cell_means = d.mean(axis=0)
    ms_cell = n_seeds * float(((cell_means - grand) ** 2).sum()) / (n_cells - 1)
    if n_seeds == 1:
        return MeanDifference(grand, 0.0, ms_cell / n_cells, 1, n_cells)
    seed_means = d.mean(axis=1)
    ms_seed = n_cells * float(((seed_means - grand) ** 2).sum()) / (n_seeds - 1)
    residual = d - seed_means[:, None] - cell_means[None, :] + grand
    ms_res = float((residual**2).sum()) / ((n_seeds - 1) * (n_cells - 1))
    scale = n_seeds * n_cells
    return MeanDifference(
        grand, ms_seed / scale, max(ms_cell - ms_res, 0.0) / scale, n_seeds, n_cells
    )


def bonferroni(p_values: np.ndarray) -> np.ndarray:
    """Return the Bonferroni-adjusted p-values min(1, m·p) of a family of m tests.

    The adjustment is family-wise: p_adj < α exactly when the 1 − α/m interval excludes 0, so
    verdicts and simultaneous intervals agree.
    """
    p_values = np.asarray(p_values, dtype=np.float64)
    return np.minimum(1.0, p_values * len(p_values))
