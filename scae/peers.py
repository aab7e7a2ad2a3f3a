"""The field's own models as peers: scvi-tools' SCVI (scVI) and LinearSCVI (LDVAE).

Each peer sees what a loss-trained autoencoder sees and nothing else: the raw counts of the
workflow's HVGs in its *training* cells, early stopping on its *validation* cells (the
workflow's split, passed to scvi-tools through ``datasplitter_kwargs``' external indexing, so
scvi-tools draws no split of its own), and ``n_latent`` = the rank k. The model is built on
the training and validation cells alone, so no statistic of the test cells (scVI's library
size prior among them) reaches it.

Its outputs are those of every compared model (:func:`scae.outputs.write_scored_run`): the
latent embedding (posterior means) of every cell, and reconstructions in the common space,
mapped exactly as the workflow maps its own count models — the expected counts over the HVGs
μ_g = ρ_g · ℓ_HVG (ρ the decoder's expression frequencies,
``get_normalized_expression(library_size=1)`` averaged over :data:`POSTERIOR_SAMPLES` draws
of z; ℓ_HVG the cell's observed counts over the HVGs, as the workflow's count losses use it,
also for LDVAE, whose own library is a latent variable), divided by the cell's library size
over *all* kept genes ℓ, × target_sum, log1p: x̂_g = log1p(μ_g / ℓ · target_sum).
(``get_normalized_expression(library_size=1e4)`` would put 1e4 counts on the HVGs alone, which
hold about a quarter of a pbmc3k cell's counts: every gene ≈ 4× too high.)

Training: scvi-tools' defaults (its max_epochs heuristic, Adam at 1e-3, batch 128, dropout
0.1, one hidden layer of 128) with early stopping on the validation ELBO (patience 45, its
default) unless ``PeerSettings`` says otherwise; the history of the validation ELBO is the
run's ``history.tsv``, so a peer that stopped at its epoch cap still improving is reported as
not converged, as every model is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import anndata as ad
import numpy as np
import pandas as pd

from .registry import PEERS

#: Posterior draws of z averaged in a reconstruction (scvi-tools' default is one draw).
POSTERIOR_SAMPLES = 25


@dataclass(frozen=True)
class PeerSettings:
    """A peer's training settings; None takes scvi-tools' default."""

    max_epochs: int | None = None
    early_stopping_patience: int = 45
    batch_size: int = 128
    learning_rate: float = 1e-3

    def cap(self, n_cells: int) -> int:
        """Return the epoch cap: ``max_epochs``, or scvi-tools' default for ``n_cells`` cells.

        Its default, min(400, round(400 · 20,000 / cells)), is computed here, since scvi-tools
        computes it in a private function (a test compares the two).
        """
        return self.max_epochs or max(1, min(round(20_000 / n_cells * 400), 400))


@dataclass
class PeerFit:
    """A trained peer: its embedding of every cell, its reconstructor, history and settings."""

    latent: np.ndarray
    #: Reconstructs rows of the dataset in the common space.
    reconstruct: Callable[[np.ndarray], np.ndarray]
    history: pd.DataFrame
    meta: dict
    train_cells: list[str]
    val_cells: list[str]


def fit_peer(
    name: str,
    adata: ad.AnnData,
    rank: int,
    seed: int,
    settings: PeerSettings = PeerSettings(),
    accelerator: str = "auto",
) -> PeerFit:
    """Train the peer ``name`` (``scvi`` or ``ldvae``) on the workflow's training cells.

    ``adata`` is the preprocessed dataset (``layers['counts']``, ``obs['split']``,
    ``obs['library_size']``, ``uns['scae']['target_sum']``).
    """
    import scvi

    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; peers are: {', '.join(PEERS)}")
    scvi.settings.seed = seed
    split = adata.obs["split"].to_numpy()
    fit_cells = ad.AnnData(
        X=adata.layers["counts"][split != "test"].copy(),
        obs=adata.obs.loc[split != "test", ["split"]].copy(),
        var=adata.var[[]].copy(),
    )
    model_class = scvi.model.SCVI if name == "scvi" else scvi.model.LinearSCVI
    model_class.setup_anndata(fit_cells)
    model = model_class(fit_cells, n_latent=rank)
    is_train = fit_cells.obs["split"].to_numpy() == "train"
    cap = settings.cap(fit_cells.n_obs)
    model.train(
        max_epochs=cap,
        accelerator=accelerator,
        batch_size=settings.batch_size,
        early_stopping=True,
        early_stopping_patience=settings.early_stopping_patience,
        datasplitter_kwargs={
            "external_indexing": [
                np.flatnonzero(is_train),
                np.flatnonzero(~is_train),
                np.array([], dtype=int),
            ]
        },
        plan_kwargs={"lr": settings.learning_rate},
        enable_progress_bar=False,
    )
    cells = ad.AnnData(
        X=adata.layers["counts"].copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy()
    )
    latent = np.asarray(model.get_latent_representation(cells), dtype=np.float32)
    library = adata.obs["library_size"].to_numpy(np.float64)
    hvg_library = np.asarray(adata.layers["counts"].sum(axis=1), dtype=np.float64).ravel()
    target_sum = float(adata.uns["scae"]["target_sum"])

    def reconstruct(rows: np.ndarray) -> np.ndarray:
        frequencies = model.get_normalized_expression(
            cells[rows],
            library_size=1,
            n_samples=POSTERIOR_SAMPLES,
            return_mean=True,
            return_numpy=True,
        )
        mu = frequencies * hvg_library[rows, None]
        return np.log1p(mu / library[rows, None] * target_sum).astype(np.float32)

    validation = model.history["elbo_validation"]["elbo_validation"].to_numpy(np.float64)
    training = model.history["elbo_train"]["elbo_train"].to_numpy(np.float64)
    epochs = len(validation)
    history = pd.DataFrame(
        {
            "epoch": np.arange(1, epochs + 1),
            "train_loss": training[:epochs],
            "val_loss": validation,
            # its own cap and patience, which whether it converged is judged by
            "max_epochs": cap,
            "patience": settings.early_stopping_patience,
        }
    )
    meta = {
        "model": name,
        "latent_dim": rank,
        "seed": seed,
        "max_epochs": cap,
        "patience": settings.early_stopping_patience,
        "learning_rate": settings.learning_rate,
        "batch_size": settings.batch_size,
        "dropout": 0.1,
        "weight_decay": 1e-6,
        "hidden": [128],
        "scvi_tools": scvi.__version__,
    }
    names = fit_cells.obs_names
    return PeerFit(
        latent,
        reconstruct,
        history,
        meta,
        list(names[model.train_indices]),
        list(names[model.validation_indices]),
    )


def settings_of(config: dict) -> PeerSettings:
    """Return the :class:`PeerSettings` of the workflow's ``peer_train`` section."""
    return PeerSettings(**{k: v for k, v in config.items() if k in asdict(PeerSettings())})
