"""PCA of sparse cells: the one fit the ``pca`` baselines and the PCA path recipe share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import scipy.sparse as sp

if TYPE_CHECKING:
    from sklearn.decomposition import PCA


def fit_pca(train_x: sp.spmatrix, n_components: int, seed: int) -> PCA:
    """PCA of sparse training cells with implicit centring (sklearn's ARPACK path).

    sklearn is imported here, on the first fit: training imports this module for the PCA
    path, and a training job without it loads no sklearn.
    """
    from sklearn.decomposition import PCA

    return PCA(n_components=n_components, svd_solver="arpack", random_state=seed).fit(train_x)
