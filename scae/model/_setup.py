"""Registering an AnnData for :class:`scae.Autoencoder`: which fields hold what, checked.

:meth:`scae.Autoencoder.setup_anndata` calls :func:`register_anndata`; the model reads the
record it leaves in ``adata.uns[SETUP_KEY]`` through :func:`setup_of`.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..config import CLUSTER_KEY, InputError
from ..data.checks import label_strings, make_names_unique, validate_counts
from ..data.hvg import gene_mean_std
from ..data.params import SPLITS, PreprocessParams
from ..data.readers import round_counts
from ..data.split import stratified_split

logger = logging.getLogger("scae")

#: Where :meth:`scae.Autoencoder.setup_anndata` records which fields of an AnnData hold what.
SETUP_KEY = "_scae_setup"

#: What a wrong counts layer's error advises.
LAYER_FIX = (
    "pass layer= the layer holding raw UMI counts (scae.preprocess writes them to layers['counts'])"
)


def register_anndata(
    adata: ad.AnnData,
    layer: str,
    labels_key: str | None,
    split_key: str,
    library_size_key: str,
    target_sum: float | None,
    split_seed: int,
) -> None:
    """Check ``adata``'s fields, add the missing ones from training cells, record the setup.

    The arguments are :meth:`scae.Autoencoder.setup_anndata`'s, which states what each field
    must hold.
    """
    _check_counts_layer(adata, layer)
    if labels_key is not None and labels_key not in adata.obs:
        raise InputError(
            f"labels_key {labels_key!r} is not a column of adata.obs "
            f"({', '.join(map(str, adata.obs.columns)) or 'no columns'}); pass the "
            "column with cell types, or labels_key=None"
        )
    make_names_unique(adata, "obs", "adata")
    if split_key not in adata.obs:
        _add_split(adata, split_key, labels_key, split_seed)
    if library_size_key not in adata.obs:
        adata.obs[library_size_key] = np.asarray(
            adata.layers[layer].sum(axis=1), dtype=np.float32
        ).ravel()
    if not {"train_mean", "train_std"} <= set(adata.var):
        is_train = (adata.obs[split_key].astype(str) == "train").to_numpy()
        mean, std = gene_mean_std(sp.csr_matrix(adata.X[is_train]))
        adata.var["train_mean"], adata.var["train_std"] = mean, std
    if target_sum is None:  # the one scae.preprocess recorded, else its default
        recorded = adata.uns.get("scae", {}).get("target_sum")
        target_sum = recorded if recorded is not None else PreprocessParams.target_sum
    adata.uns[SETUP_KEY] = {
        "layer": layer,
        "labels_key": labels_key or "",
        "split_key": split_key,
        "library_size_key": library_size_key,
        "target_sum": float(target_sum),
    }


def _check_counts_layer(adata: ad.AnnData, layer: str) -> None:
    """Refuse a missing or non-count ``layer``; round conversion noise away in place."""
    if layer not in adata.layers:
        raise InputError(
            f"layer {layer!r} is not in adata.layers (layers: "
            f"{', '.join(adata.layers) or 'none'}); pass layer= the layer holding raw "
            "counts, or run scae.preprocess on the raw-count AnnData first"
        )
    if validate_counts(
        adata.layers[layer],
        f"adata.layers[{layer!r}]",
        "adata",
        require_integers=False,
        fix=LAYER_FIX,
    ):
        adata.layers[layer] = round_counts(adata.layers[layer])


def _add_split(adata: ad.AnnData, split_key: str, labels_key: str | None, seed: int) -> None:
    """Add a stratified train/val/test split in ``obs[split_key]``.

    The split is stratified by ``labels_key`` when given, with :class:`PreprocessParams`'
    fractions.
    """
    params = PreprocessParams()
    # a missing label stays missing: one stratum of its own
    labels = label_strings(adata.obs[labels_key]) if labels_key else None
    adata.obs[split_key] = pd.Categorical(
        stratified_split(labels, adata.n_obs, params.test_fraction, params.val_fraction, seed),
        categories=SPLITS,
    )
    logger.info(
        "setup_anndata: added a %s split in obs[%r] (seed %d)", "/".join(SPLITS), split_key, seed
    )


def setup_of(adata: ad.AnnData) -> dict:
    """Return the setup :func:`register_anndata` recorded in ``adata``.

    Raise an error if there is none.
    """
    if SETUP_KEY not in adata.uns:
        raise InputError(
            "this AnnData is not registered; call scae.Autoencoder.setup_anndata(adata, "
            "layer='counts', labels_key=...) first"
        )
    return adata.uns[SETUP_KEY]


def check_genes(adata: ad.AnnData, var_names: list[str], source) -> None:
    """Refuse an AnnData whose genes are not ``var_names`` in that order."""
    if list(map(str, adata.var_names)) != list(var_names):
        shared = len(set(var_names) & set(map(str, adata.var_names)))
        raise InputError(
            f"adata has {adata.n_vars} genes, {source} was trained on {len(var_names)} "
            f"({shared} shared, or the order differs); subset it to the model's genes: "
            "adata[:, model.var_names]"
        )


def negatives_group_key(adata: ad.AnnData, loss_params: dict) -> str | None:
    """Return the obs column ``cosine_embedding``'s negative pairs avoid (None: any other cell).

    Parameters
    ----------
    adata
        The registered AnnData the model trains on.
    loss_params
        The loss's parameters; only ``negative_sampling`` is read (default ``"random"``).
    """
    sampling = loss_params.get("negative_sampling", "random")
    if sampling == "label":
        labels_key = setup_of(adata)["labels_key"]
        if not labels_key:
            raise InputError(
                "negative_sampling='label' draws negatives from other cell types, but no "
                "labels_key was registered; call Autoencoder.setup_anndata(adata, "
                "labels_key=...) or use negative_sampling='random' or 'cluster'"
            )
        return labels_key
    if sampling == "cluster":
        if CLUSTER_KEY not in adata.obs:
            raise InputError(
                f"negative_sampling='cluster' needs training-cell clusters in "
                f"adata.obs[{CLUSTER_KEY!r}]; run scae.preprocess(..., clusters=True) or "
                "use negative_sampling='random' or 'label'"
            )
        return CLUSTER_KEY
    return None
