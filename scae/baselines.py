"""Reference reconstructions every autoencoder is compared with, fit on training cells only.

* ``mean``: every cell is reconstructed as the training-mean profile m̄ (what a model that
  learnt nothing about individual cells scores);
* ``pca``: x̂ = m̄ + (x − m̄) V_k V_kᵀ with V_k the top-k principal axes of the training cells,
  k = the autoencoder's latent dimension: the best rank-k affine reconstruction under MSE;
* ``library_size``: the count model that knows only each cell's library size ℓ: expected
  counts μ_g = ℓ·p̄_g with p̄_g = Σ_train c_g / Σ_train ℓ, i.e. x̂_g = log1p(p̄_g · target_sum);
* ``no_denoising`` (molecular cross-validation only): the noisy input itself, x̂ = x.
"""

from __future__ import annotations

import anndata as ad
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


def library_size_reconstruction(
    train_counts: sp.spmatrix, train_library: np.ndarray, target_sum: float, n_cells: int
) -> np.ndarray:
    pooled = np.asarray(train_counts.sum(axis=0), dtype=np.float64).ravel() / train_library.sum()
    return mean_reconstruction(np.log1p(pooled * target_sum), n_cells)


def baseline_outputs(
    name: str, adata: ad.AnnData, n_components: int, seed: int
) -> tuple[np.ndarray | None, np.ndarray]:
    """(embedding of every cell or None, reconstruction of the test cells) of a baseline."""
    split = adata.obs["split"].to_numpy()
    train, test_rows = split == "train", np.flatnonzero(split == "test")
    if name == "mean":
        return None, mean_reconstruction(adata.var["train_mean"].to_numpy(), len(test_rows))
    if name == "pca":
        pca = fit_pca(adata.X[train], min(n_components, adata.n_vars - 1), seed)
        return pca_embed_and_reconstruct(pca, adata.X, test_rows)
    if name == "library_size":
        return None, library_size_reconstruction(
            adata.layers["counts"][train], adata.obs["library_size"].to_numpy()[train],
            float(adata.uns["scae"]["target_sum"]), len(test_rows),
        )
    if name == "no_denoising":
        return None, adata.X[test_rows].toarray()
    raise ValueError(f"unknown baseline {name!r}")
