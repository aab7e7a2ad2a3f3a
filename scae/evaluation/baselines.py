"""Reference reconstructions every autoencoder is compared with, fit on training cells only.

* ``mean``: every cell is reconstructed as the training-mean profile m̄ (what a model that
  learnt nothing about individual cells scores);
* ``pca``: x̂ = m̄ + (x − m̄) V_k V_kᵀ with V_k the top-k principal axes of the training cells,
  k = the autoencoder's latent dimension: the best rank-k affine reconstruction under MSE;
* ``pca_mcv_rank`` (molecular cross-validation only): the same with the rank that denoising
  itself selects (Batson et al. 2019): k ∈ 1…K minimising ``mcv_mse`` of the *validation*
  cells' reconstructions against their held-out molecules (:func:`mcv_rank_curve`);
* ``library_size``: the count model that knows only each cell's library size ℓ: expected
  counts μ_g = ℓ·p̄_g with p̄_g = Σ_train c_g / Σ_train ℓ, i.e. x̂_g = log1p(p̄_g · target_sum);
* ``no_denoising`` (molecular cross-validation only): the noisy input itself, x̂ = x.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import anndata as ad
import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA

from ..config import MIN_STD
from ..data.mcv import HELDOUT_LAYER
from ..io import logger
from ..pca import fit_pca
from .mcv import heldout_expression
from .metrics import CHUNK


def pca_embed_and_reconstruct(
    pca: PCA, x: sp.spmatrix, recon_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """PCA scores of every cell and reconstructions of ``recon_rows``, chunk by chunk."""
    scores = np.vstack(
        [pca.transform(x[start : start + CHUNK]) for start in range(0, x.shape[0], CHUNK)]
    ).astype(np.float32)
    recon = pca.inverse_transform(scores[recon_rows]).astype(np.float32)
    return scores, recon


def mcv_rank_curve(pca: PCA, x: sp.spmatrix, target: sp.spmatrix) -> np.ndarray:
    """Return ``mcv_mse`` at every rank k = 1…K of a fitted PCA.

    At rank k: the mean over cells and genes of (m̄ + Σ_{j≤k} z_j v_jᵀ − y)², with z the
    cells' scores, v_j the axes and y = ``target`` (the held-out molecules in log-normalized
    space). Element k − 1 is rank k.
    """
    scores = pca.transform(x)
    residual = pca.mean_[None, :] - target.toarray()
    curve = np.empty(pca.n_components_)
    for j in range(pca.n_components_):
        residual += np.outer(scores[:, j], pca.components_[j])
        curve[j] = float(np.mean(residual**2))
    return curve


def pca_mcv_rank(adata: ad.AnnData, max_rank: int, seed: int) -> int:
    """Return the PCA rank k ∈ 1…``max_rank`` with the lowest validation-cell ``mcv_mse``.

    PCA is fit on training cells' molecules c', validation cells are reconstructed from their
    c' and scored against their held-out c''. Test cells play no part.
    """
    if HELDOUT_LAYER not in adata.layers:
        raise ValueError(
            f"baseline pca_mcv_rank needs the held-out molecules layers[{HELDOUT_LAYER!r}]: it "
            "exists only for the molecular cross-validation variant (<dataset>.mcv)"
        )
    split = adata.obs["split"].to_numpy()
    train, val = split == "train", split == "val"
    limit = min(max_rank, adata.n_vars - 1, int(train.sum()) - 1)
    pca = fit_pca(adata.X[train], limit, seed)
    target = heldout_expression(
        adata.layers[HELDOUT_LAYER][val],
        adata.obs["mcv_library_size"].to_numpy(np.float64)[val],
        float(adata.uns["scae"]["target_sum"]),
    )
    curve = mcv_rank_curve(pca, adata.X[val], target)
    rank = int(np.argmin(curve)) + 1
    logger.info(
        "pca_mcv_rank: validation mcv_mse by rank 1..%d: %s; chosen rank %d",
        limit,
        np.array2string(curve, precision=5, max_line_width=10**6),
        rank,
    )
    return rank


def mean_reconstruction(train_mean: np.ndarray, n_cells: int) -> np.ndarray:
    """Return ``n_cells`` copies of the profile ``train_mean`` (a read-only broadcast view)."""
    return np.broadcast_to(np.asarray(train_mean, dtype=np.float32), (n_cells, len(train_mean)))


def library_size_reconstruction(
    train_counts: sp.spmatrix, train_library: np.ndarray, target_sum: float, n_cells: int
) -> np.ndarray:
    """Return the ``library_size`` baseline's reconstruction of ``n_cells`` cells.

    Every cell gets x̂_g = log1p(p̄_g · target_sum), with p̄_g = Σ_train c_g / Σ_train ℓ the
    pooled share of gene g in the training counts (module docstring).
    """
    pooled = np.asarray(train_counts.sum(axis=0), dtype=np.float64).ravel() / train_library.sum()
    return mean_reconstruction(np.log1p(pooled * target_sum), n_cells)


def _scaled(x: sp.spmatrix, train_std: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    scale = np.maximum(np.asarray(train_std, dtype=np.float64), MIN_STD)
    return sp.csr_matrix(x.multiply(1.0 / scale[None, :])), scale


def zscored_pca(
    x: sp.spmatrix,
    train: np.ndarray,
    train_std: np.ndarray,
    n_components: int,
    seed: int,
    recon_rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Return :func:`fit_pca`'s scores and reconstructions in the z-scored input space.

    The space the autoencoders see under ``input_scaling: zscore``: PCA of x/s (s the training
    sd per gene, at least MIN_STD; PCA's own centring makes it (x − m̄)/s), reconstructions
    mapped back by × s. Its rank-k reconstruction is the best affine one for the MSE of
    z-scored values, as plain PCA is for log values. x/s stays sparse.
    """
    scaled, scale = _scaled(x, train_std)
    pca = fit_pca(scaled[train], min(n_components, x.shape[1] - 1), seed)
    scores, recon = pca_embed_and_reconstruct(pca, scaled, recon_rows)
    return scores, (recon * scale[None, :]).astype(np.float32)


#: ``reconstruct(rows)``: a baseline's dense reconstruction (float32) of those cells.
Reconstructor = Callable[[np.ndarray], np.ndarray]


def _pca_reconstructor(
    pca: PCA, scores: np.ndarray, scale: np.ndarray | None = None
) -> Reconstructor:
    def reconstruct(rows: np.ndarray) -> np.ndarray:
        recon = pca.inverse_transform(scores[rows])
        return (recon if scale is None else recon * scale[None, :]).astype(np.float32)

    return reconstruct


@dataclass(frozen=True)
class BaselineSettings:
    """What a baseline's fit may use besides the data.

    PCA's ``rank`` (the latent rank), the ``seed`` of its solver, the ranks ``pca_mcv_rank``
    searches, and the autoencoders' ``input_scaling`` (PCA is fit where they are).
    """

    rank: int | None = None
    seed: int = 0
    max_pca_rank: int = 100
    input_scaling: str = "none"


#: A baseline's fit: (preprocessed data, settings) → (embedding of every cell or None,
#: :data:`Reconstructor`), training cells only.
BaselineFit = Callable[[ad.AnnData, BaselineSettings], tuple[np.ndarray | None, Reconstructor]]


def _training(adata: ad.AnnData) -> np.ndarray:
    return adata.obs["split"].to_numpy() == "train"


def _pca_at(adata: ad.AnnData, rank: int, settings: BaselineSettings, scaled: bool):
    x, scale = adata.X, None
    if scaled:
        x, scale = _scaled(adata.X, adata.var["train_std"].to_numpy())
    pca = fit_pca(x[_training(adata)], min(rank, adata.n_vars - 1), settings.seed)
    scores = np.vstack(
        [pca.transform(x[start : start + CHUNK]) for start in range(0, x.shape[0], CHUNK)]
    ).astype(np.float32)
    return scores, _pca_reconstructor(pca, scores, scale)


def fit_pca_baseline(adata: ad.AnnData, settings: BaselineSettings):
    """``pca``: PCA at the latent rank, z-scored where the autoencoders are."""
    if settings.rank is None:
        raise ValueError("baseline pca needs n_components (its rank)")
    return _pca_at(adata, settings.rank, settings, settings.input_scaling == "zscore")


def fit_pca_mcv_rank(adata: ad.AnnData, settings: BaselineSettings):
    """``pca_mcv_rank``: PCA at the rank molecular cross-validation picks (:func:`pca_mcv_rank`)."""
    rank = pca_mcv_rank(adata, settings.max_pca_rank, settings.seed)
    return _pca_at(adata, rank, settings, scaled=False)


def fit_mean(adata: ad.AnnData, settings: BaselineSettings):
    """``mean``: every cell reconstructed as the training-mean profile."""
    profile = adata.var["train_mean"].to_numpy()
    return None, lambda rows: mean_reconstruction(profile, len(rows))


def fit_library_size(adata: ad.AnnData, settings: BaselineSettings):
    """``library_size``: the pooled training profile at each cell's library size."""
    train = _training(adata)
    profile = library_size_reconstruction(
        adata.layers["counts"][train],
        adata.obs["library_size"].to_numpy()[train],
        float(adata.uns["scae"]["target_sum"]),
        1,
    )[0]
    return None, lambda rows: mean_reconstruction(profile, len(rows))


def fit_no_denoising(adata: ad.AnnData, settings: BaselineSettings):
    """``no_denoising``: the noisy input itself."""
    return None, lambda rows: adata.X[rows].toarray().astype(np.float32)


#: Each baseline of :data:`scae.registry.BASELINES` (by its short name) and its fit.
BASELINE_FITS: dict[str, BaselineFit] = {
    "mean": fit_mean,
    "pca": fit_pca_baseline,
    "library_size": fit_library_size,
    "no_denoising": fit_no_denoising,
    "pca_mcv_rank": fit_pca_mcv_rank,
}


def baseline_model(
    name: str,
    adata: ad.AnnData,
    n_components: int | None,
    seed: int,
    max_pca_rank: int,
    input_scaling: str = "none",
) -> tuple[np.ndarray | None, Reconstructor]:
    """Fit the baseline ``name`` (:data:`BASELINE_FITS`) on the training cells.

    Returns (embedding of every cell or None, :data:`Reconstructor`). ``n_components`` is
    ``pca``'s rank (unused by the others), ``max_pca_rank`` bounds the ranks ``pca_mcv_rank``
    searches. With ``input_scaling: zscore``, ``pca`` is fit where the autoencoders are
    (:func:`zscored_pca`).
    """
    if name not in BASELINE_FITS:
        raise ValueError(f"unknown baseline {name!r}; baselines are: {', '.join(BASELINE_FITS)}")
    settings = BaselineSettings(n_components, seed, max_pca_rank, input_scaling)
    return BASELINE_FITS[name](adata, settings)


def baseline_outputs(
    name: str,
    adata: ad.AnnData,
    n_components: int | None,
    seed: int,
    max_pca_rank: int,
    input_scaling: str = "none",
) -> tuple[np.ndarray | None, np.ndarray]:
    """Fit a baseline (:func:`baseline_model`) and reconstruct the test cells.

    Returns (embedding of every cell or None, reconstruction of the test cells).
    """
    latent, reconstruct = baseline_model(
        name, adata, n_components, seed, max_pca_rank, input_scaling
    )
    return latent, reconstruct(np.flatnonzero(adata.obs["split"].to_numpy() == "test"))
