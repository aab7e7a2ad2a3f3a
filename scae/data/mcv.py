"""Molecular cross-validation (Batson, Royer & Webber 2019), the Open Problems denoising metric.

Each cell's molecules are split binomially: c' ~ Binomial(c, p), c'' = c − c'. Models train
on c' (the whole workflow runs on it: QC, split, HVGs, training); their reconstructions of
the test cells, which also only saw c', are scored against the held-out molecules c''
(:mod:`scae.evaluation.mcv`):

* ``mcv_mse``          mean over cells and genes of (x̂ − log1p(c''/ℓ'' · target_sum))², the
  MSE in normalize_total + log1p space (ℓ'' the held-out library size);
* ``mcv_poisson_nll`` / ``mcv_nb_nll``  the count likelihoods of
  :func:`scae.evaluation.metrics.count_nll` of c'' under μ'' = μ' · Σℓ''/Σℓ', the denoised
  counts rescaled by the ratio of totals.

A model that denoises predicts the held-out molecules better than the noisy c' itself (the
``no_denoising`` control).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Layer of the preprocessed AnnData holding the held-out molecules c'' of the kept genes.
HELDOUT_LAYER = "mcv_heldout"


def binomial_split(
    counts: sp.csr_matrix, train_fraction: float, seed: int | np.random.Generator
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(c', c'') with c' ~ Binomial(c, p) per entry and c'' = c − c' (totals kept exactly).

    ``seed`` is a seed or a generator: the out-of-core path passes one generator through
    its blocks of cells, so a block's draws continue where the previous block's ended.
    """
    train = binomial_thin(counts, train_fraction, seed, drop_zeros=False)
    heldout = counts.astype(np.float32) - train
    train.eliminate_zeros()
    heldout.eliminate_zeros()
    return sp.csr_matrix(train), sp.csr_matrix(heldout)


def binomial_thin(
    counts: sp.csr_matrix,
    fraction: float,
    seed: int | np.random.Generator,
    drop_zeros: bool = True,
) -> sp.csr_matrix:
    """Thin the counts binomially: c' ~ Binomial(c, ``fraction``) per entry.

    Every molecule is kept independently with probability ``fraction``, i.e. the counts the
    same cells would have at that fraction of the sequencing depth. Draws run in the order of
    the stored entries, so one generator passed through consecutive blocks of rows gives the
    same c' as the whole matrix at once.
    """
    rng = np.random.default_rng(seed)
    thinned = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    thinned.data = rng.binomial(np.rint(counts.data).astype(np.int64), fraction).astype(np.float32)
    if drop_zeros:
        thinned.eliminate_zeros()
    return thinned
