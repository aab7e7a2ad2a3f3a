"""Molecular cross-validation's scores: reconstructions against held-out molecules.

The split itself (c' ~ Binomial(c, p), c'' = c − c') is preprocessing's, :mod:`scae.data.mcv`;
what is scored here:

* ``mcv_mse``          mean over cells and genes of (x̂ − log1p(c''/ℓ'' · target_sum))²;
* ``mcv_poisson_nll`` / ``mcv_nb_nll``  the count likelihoods of
  :func:`scae.evaluation.metrics.count_nll` of c'' under μ'' = μ' · Σℓ''/Σℓ'.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .metrics import count_nll, expected_counts, per_cell_metrics


def heldout_expression(
    heldout: sp.spmatrix, heldout_library: np.ndarray, target_sum: float
) -> sp.csr_matrix:
    """Return log1p(c''/ℓ'' · target_sum), the held-out molecules in ``mcv_mse``'s space.

    A cell without held-out molecules is all zeros.
    """
    scale = np.divide(
        target_sum, heldout_library, out=np.zeros(len(heldout_library)), where=heldout_library > 0
    )
    expression = sp.csr_matrix(sp.diags(scale) @ sp.csr_matrix(heldout, dtype=np.float64))
    expression.data = np.log1p(expression.data)
    return expression


def mcv_metrics(
    heldout: sp.spmatrix,
    recon: np.ndarray,
    train_library: np.ndarray,
    heldout_library: np.ndarray,
    target_sum: float,
    theta: np.ndarray,
) -> dict[str, float]:
    """Score common-space reconstructions of test cells against their held-out molecules."""
    heldout = sp.csr_matrix(heldout, dtype=np.float64)
    target = heldout_expression(heldout, heldout_library, target_sum)
    mse = per_cell_metrics(target, recon, np.zeros(recon.shape[1]))["mse"].mean()
    ratio = heldout_library.sum() / train_library.sum()
    mu = expected_counts(recon, train_library, target_sum) * ratio
    nll = count_nll(heldout, mu, theta)
    return {"mcv_mse": float(mse), **{f"mcv_{k}": v for k, v in nll.items()}}
