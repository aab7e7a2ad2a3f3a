"""Reference reconstructions every autoencoder is compared with, fit on training cells only.

* ``mean``: every cell is reconstructed as the training-mean profile m̄ (what a model that
  learnt nothing about individual cells scores);
* ``pca``: x̂ = m̄ + (x − m̄) V_k V_kᵀ with V_k the top-k principal axes of the training cells,
  k = the autoencoder's latent dimension: the best rank-k affine reconstruction under MSE.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA

from .metrics import CHUNK


def fit_pca(train_x: sp.spmatrix, n_components: int, seed: int) -> PCA:
    """PCA of sparse training cells with implicit centring (sklearn's ARPACK path)."""
    return PCA(n_components=n_components, svd_solver="arpack", random_state=seed).fit(train_x)


def pca_embed_and_reconstruct(
    pca: PCA, x: sp.spmatrix, recon_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """PCA scores of every cell and reconstructions of ``recon_rows``, chunk by chunk."""
    scores = np.vstack(
        [pca.transform(x[start : start + CHUNK]) for start in range(0, x.shape[0], CHUNK)]
    ).astype(np.float32)
    recon = pca.inverse_transform(scores[recon_rows]).astype(np.float32)
    return scores, recon


def mean_reconstruction(train_mean: np.ndarray, n_cells: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(train_mean, dtype=np.float32), (n_cells, len(train_mean)))
