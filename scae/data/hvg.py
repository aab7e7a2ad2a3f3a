"""Gene moments and Seurat-flavour highly variable genes, computed on training cells only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


class GeneMoments:
    """Per-gene count, mean and sum of squared deviations M2 of sparse rows, block by block.

    The blocks are combined as Chan, Golub & LeVeque (1979) do (stable at any number of
    cells).

    A block b of n_b cells has mean_b = Σx / n_b and M2_b = Σ_stored (x − mean_b)² +
    (n_b − stored) · mean_b²; merged into (n_a, mean_a, M2_a): n = n_a + n_b,
    δ = mean_b − mean_a, mean = mean_a + δ·n_b/n, M2 = M2_a + M2_b + δ²·n_a·n_b/n.
    """

    def __init__(self, n_genes: int) -> None:
        self.n = 0
        self.mean = np.zeros(n_genes)
        self.m2 = np.zeros(n_genes)

    def add(self, X: sp.csr_matrix) -> GeneMoments:
        """Merge the moments of the block of rows ``X`` (cells × genes) into these.

        Parameters
        ----------
        X
            A block of cells, sparse CSR with one column per gene.

        Returns
        -------
        GeneMoments
            ``self``, updated in place (so that calls chain).
        """
        n_b = X.shape[0]
        if n_b == 0:
            return self
        n_genes = len(self.mean)
        values = X.data.astype(np.float64)
        mean_b = np.bincount(X.indices, values, minlength=n_genes) / n_b
        stored = np.bincount(X.indices, minlength=n_genes)
        values -= mean_b[X.indices]
        m2_b = np.bincount(X.indices, values * values, minlength=n_genes)
        m2_b += (n_b - stored) * mean_b**2
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 += m2_b + delta**2 * (self.n * n_b / n)
        self.mean += delta * (n_b / n)
        self.n = n
        return self

    def variance(self) -> np.ndarray:
        """Return the unbiased variance M2 / (n − 1) (M2 / n for a single cell, as scanpy)."""
        return self.m2 / (self.n - 1 if self.n > 1 else max(self.n, 1))


def gene_mean_std(X: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and sample standard deviation of a sparse matrix, without densifying."""
    moments = GeneMoments(X.shape[1]).add(sp.csr_matrix(X))
    return moments.mean.astype(np.float32), np.sqrt(moments.variance()).astype(np.float32)


def seurat_hvg(mean: np.ndarray, var: np.ndarray, n_top: int, n_bins: int = 20) -> np.ndarray:
    """Select highly variable genes as scanpy's ``flavor="seurat"`` does, from gene moments.

    The genes ``scanpy.pp.highly_variable_genes(flavor="seurat", n_top_genes=n_top)``
    selects, from each gene's mean m and unbiased variance v of expm1(X) (the normalized
    counts), so that the moments can be accumulated out of core.

    Dispersion d = log(v / m) (m = 0 counts as 1e-12; d = log 0 is NaN); genes fall into
    ``n_bins`` equal-width bins of log1p(m); the normalized dispersion is
    z = (d − mean of d in the bin) / (sd of d in the bin), or z = d / d for a bin of one
    gene. The n_top genes of highest z are kept (all genes tied at the cut-off; never NaN).
    """
    mean = np.where(mean == 0, 1e-12, mean)
    dispersion = var / mean
    dispersion[dispersion == 0] = np.nan
    dispersion = np.log(dispersion)
    bins = pd.cut(pd.Series(np.log1p(mean)), bins=n_bins)
    stats = pd.Series(dispersion).groupby(bins, observed=True).agg(["mean", "std"])
    single = stats["std"].isnull()
    stats.loc[single, "std"] = stats.loc[single, "mean"]
    stats.loc[single, "mean"] = 0.0
    per_gene = stats.loc[bins]
    normalized = (dispersion - per_gene["mean"].to_numpy()) / per_gene["std"].to_numpy()
    ranked = np.sort(normalized[~np.isnan(normalized)])[::-1]
    if len(ranked) == 0 or n_top < 1:  # no gene varies: nothing to select
        return np.zeros(len(mean), dtype=bool)
    cutoff = ranked[min(n_top, len(ranked)) - 1]
    # NaN (no dispersion) never selected; ±inf (a bin of equal dispersions, up to rounding)
    # compared as they are, so a cut-off of +inf still selects its own genes
    return np.where(np.isnan(normalized), -np.inf, normalized) >= cutoff
