"""The AnnData-first model API, in scvi-tools' conventions; the workflow's ``train`` job runs it.

::

    adata = scae.preprocess(raw, label_key="cell_type")          # QC, split, HVGs on train
    scae.Autoencoder.setup_anndata(adata, layer="counts", labels_key="cell_type")
    model = scae.Autoencoder(adata, loss="nb", latent_dim=32)
    model.train(device="auto")
    adata.obsm["X_scae"] = model.get_latent_representation()
    model.save("my_model/")
    model = scae.Autoencoder.load("my_model/", adata)

Every default (architecture, optimisation, loss parameters) comes from :class:`ModelParams`,
:class:`TrainParams` and each loss's registry entry, which read them from
``config/schema.yaml`` (:mod:`scae._schema`): the workflow's defaults are the API's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch

from .. import _schema
from ..config import InputError
from ..data.checks import validate_counts
from ..data.params import PreprocessParams
from ..io import atomic_path
from ..module.losses import get_loss
from ..module.network import ModelParams
from ..train.cells import CellData, InputScaling, resolve_device
from ..train.inference import (
    FitResult,
    latent_representation,
    load_model,
    reconstruction,
    save_model,
)
from ..train.stacked import fit_stacked
from ..train.trainer import CHECKPOINT_INTERVAL, TrainParams, fit
from ._setup import (
    LAYER_FIX,
    SETUP_KEY,
    check_genes,
    negatives_group_key,
    register_anndata,
    setup_of,
)

logger = logging.getLogger("scae")

MODEL_FILE, HISTORY_FILE = "model.pt", "history.tsv"
_MODEL_DEFAULTS = ModelParams(n_genes=1)
_TRAIN_DEFAULTS = TrainParams()
#: config/schema.yaml's train defaults, the job settings among them (stack_size)
_TRAIN_JOB_DEFAULTS = _schema.defaults("train")


class Autoencoder:
    """An MLP autoencoder trained under one reconstruction loss (see ``scae.module.losses.LOSSES``).

    Parameters
    ----------
    adata
        An AnnData registered with :meth:`setup_anndata`: ``X`` the log-normalized expression
        the model reconstructs, the registered layer its raw counts.
    loss
        A registered loss name (``mse``, ``cosine``, ``cosine_embedding``, ``mse_cosine``,
        ``pearson``, ``poisson``, ``nb``, ``zinb``).
    loss_params
        Overrides of the loss's parameters (e.g. ``{"margin": 0.6}``); the rest keep their
        defaults (``scae.module.losses.LOSSES[loss].defaults``).
    hidden, latent_dim, dropout, batch_norm
        The encoder's widths (the decoder mirrors them), the latent size, dropout after
        every hidden layer, batch norm before every ReLU.
    input_scaling
        ``"none"`` or ``"zscore"``: genes scaled by the training cells' mean and sd.
    pca_path
        A training recipe: the training cells' PCA at ``latent_dim``, frozen, carries the input
        to the latent code and the code to the output, and the network learns a residual on it
        from PCA's reconstruction on (:class:`scae.module.network.AutoencoderModule`). The
        latent code stays ``latent_dim`` numbers and the output is decoded from it alone.
    """

    def __init__(
        self,
        adata: ad.AnnData,
        loss: str = "mse",
        loss_params: dict[str, Any] | None = None,
        *,
        hidden: tuple[int, ...] = _MODEL_DEFAULTS.hidden,
        latent_dim: int = _MODEL_DEFAULTS.latent_dim,
        dropout: float = _MODEL_DEFAULTS.dropout,
        batch_norm: bool = _MODEL_DEFAULTS.batch_norm,
        input_scaling: InputScaling = "none",
        pca_path: bool = _MODEL_DEFAULTS.pca_path,
    ):
        self.adata = adata
        self.setup = setup_of(adata)
        self.loss = get_loss(loss)
        self.loss_params = self.loss.parameters(loss_params)
        if input_scaling not in ("none", "zscore"):
            raise ValueError(f"input_scaling={input_scaling!r}; use 'none' or 'zscore'")
        self.input_scaling = input_scaling
        if self.loss.uses_counts:
            layer = self.setup["layer"]
            validate_counts(
                adata.layers[layer],
                f"adata.layers[{layer!r}]",
                "adata",
                require_integers=True,
                fix=LAYER_FIX,
            )
        self.module_params = ModelParams(
            n_genes=adata.n_vars,
            hidden=tuple(hidden),
            latent_dim=latent_dim,
            dropout=dropout,
            batch_norm=batch_norm,
            pca_path=pca_path,
            output=self.loss.output,
            dispersion=self.loss_params.get("dispersion", _MODEL_DEFAULTS.dispersion),
        )
        self.var_names = list(map(str, adata.var_names))
        # The training cells' gene moments: the z-scoring of every AnnData this model sees.
        self.scaling = (
            adata.var["train_mean"].to_numpy(np.float32),
            adata.var["train_std"].to_numpy(np.float32),
        )
        self.target_sum = float(self.setup["target_sum"])
        self.module = None
        self.history: pd.DataFrame | None = None
        self.train_params: TrainParams | None = None
        self.seed: int | None = None
        self.best_epoch: int | None = None
        self.stopped_by: str | None = None
        self.device = torch.device("cpu")

    def __repr__(self) -> str:
        """Return the loss, the architecture and whether (and how) the model was trained."""
        state = (
            f"trained, best epoch {self.best_epoch}, stopped by {self.stopped_by}"
            if self.is_trained
            else "not trained"
        )
        return (
            f"Autoencoder(loss={self.loss.name!r}, latent_dim="
            f"{self.module_params.latent_dim}, hidden={list(self.module_params.hidden)}, "
            f"{self.module_params.n_genes} genes; {state})"
        )

    # --- AnnData registration ----------------------------------------------------------

    @classmethod
    def setup_anndata(
        cls,
        adata: ad.AnnData,
        layer: str = "counts",
        labels_key: str | None = None,
        split_key: str = "split",
        library_size_key: str = "library_size",
        target_sum: float | None = None,
        split_seed: int = PreprocessParams.split_seed,
    ) -> None:
        """Check and register, in place, the fields an :class:`Autoencoder` reads.

        ``adata.X`` holds log1p(normalized expression), ``adata.layers[layer]`` raw counts of
        the same genes (checked: non-negative integers; values within
        :data:`scae.data.COUNT_TOLERANCE` of integers are rounded in place). Fields
        :func:`scae.preprocess` writes are used as they are; missing ones are added, from
        training cells only: ``obs[split_key]`` (a stratified train/val/test split, by
        ``labels_key`` when given), ``obs[library_size_key]`` (the counts' row sums),
        ``var['train_mean'/'train_std']``. ``target_sum`` is the ``normalize_total`` target X
        was made with (default: the one :func:`scae.preprocess` recorded, else 10⁴). Duplicate
        cell names are made unique.
        """
        register_anndata(
            adata, layer, labels_key, split_key, library_size_key, target_sum, split_seed
        )

    # --- training ----------------------------------------------------------------------

    def train(
        self,
        max_epochs: int = _TRAIN_DEFAULTS.max_epochs,
        patience: int = _TRAIN_DEFAULTS.patience,
        batch_size: int = _TRAIN_DEFAULTS.batch_size,
        learning_rate: float = _TRAIN_DEFAULTS.learning_rate,
        weight_decay: float = _TRAIN_DEFAULTS.weight_decay,
        lr_patience: int = _TRAIN_DEFAULTS.lr_patience,
        lr_factor: float = _TRAIN_DEFAULTS.lr_factor,
        ema_decay: float = _TRAIN_DEFAULTS.ema_decay,
        count_thinning: float = _TRAIN_DEFAULTS.count_thinning,
        input_masking: float = _TRAIN_DEFAULTS.input_masking,
        seed: int = 0,
        device: str | torch.device = "auto",
        checkpoint: str | Path | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        resume_from: str | Path | None = None,
    ) -> Autoencoder:
        """Train from fresh weights on the ``train`` cells; early-stop on ``val`` loss.

        The best epoch's weights are kept. After every ``lr_patience`` epochs without a new
        best validation loss the learning rate is multiplied by ``lr_factor`` (reduce on
        plateau; 0 switches it off). The recipes of :mod:`scae.train.recipes`, each off at 0:
        ``ema_decay`` keeps the exponential moving average of the weights (validated,
        early-stopped and returned), ``count_thinning`` feeds each training cell's counts
        binomially thinned by that fraction, ``input_masking`` zeroes that fraction of input
        entries (targets stay whole). ``seed`` fixes the initial weights, minibatch order,
        dropout masks, input corruption and negative pairs; test cells are never read.
        ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``. With
        ``checkpoint``, the state is saved there every ``checkpoint_interval`` seconds (0:
        every epoch) and after the last epoch, and a run of the same cells, settings and seed
        resumes from it, bitwise as if uninterrupted. ``resume_from`` is another such file to
        resume when ``checkpoint`` holds none: :func:`scae.train.tune.tune`'s ``best_run``,
        the winning trial, is this run when the settings, seed and epoch cap are the trial's,
        so nothing is retrained.
        Threads: torch's own setting (``torch.set_num_threads``) is left as it is.
        """
        self.train_params = TrainParams(
            batch_size=batch_size,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            max_epochs=max_epochs,
            patience=patience,
            lr_patience=lr_patience,
            lr_factor=lr_factor,
            ema_decay=ema_decay,
            count_thinning=count_thinning,
            input_masking=input_masking,
        )
        self.device, self.seed = resolve_device(device), int(seed)
        result: FitResult = fit(
            self.training_data(),
            self.loss,
            self.loss_params,
            self.module_params,
            self.train_params,
            seed=self.seed,
            device=self.device,
            checkpoint=Path(checkpoint) if checkpoint is not None else None,
            checkpoint_interval=checkpoint_interval,
            resume_from=Path(resume_from) if resume_from is not None else None,
        )
        return self._trained(result)

    @classmethod
    def train_stacked(
        cls,
        models: Sequence[Autoencoder],
        seeds: int | Sequence[int] = 0,
        *,
        device: str | torch.device = "auto",
        stack_size: int = _TRAIN_JOB_DEFAULTS["stack_size"],
        checkpoint: str | Path | None = None,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        **train_kwargs: Any,
    ) -> list[Autoencoder]:
        """Train several models of one AnnData and loss at once, as one stacked model.

        ``models`` may differ in ``latent_dim`` only (same AnnData, loss, loss parameters,
        architecture otherwise, input scaling); ``seeds`` is one seed for all or one per model.
        Each model ends exactly as ``model.train(seed=its seed, **train_kwargs)`` would leave it
        (bitwise on the CPU): its own initial weights, minibatch order, dropout masks, negative
        pairs and early stopping. What is shared is the work: one forward and backward per
        step over every model still training, one read of the cells. ``stack_size`` caps the
        models per stack (0: all); ``checkpoint`` and the rest as in :meth:`train`.

        Example::

            models = [scae.Autoencoder(adata, "nb", latent_dim=k) for k in (4, 8, 16, 32)]
            scae.Autoencoder.train_stacked(models, seeds=0)
        """
        models = list(models)
        seeds = [int(seeds)] * len(models) if isinstance(seeds, int) else [int(s) for s in seeds]
        if len(seeds) != len(models):
            raise ValueError(f"{len(seeds)} seeds for {len(models)} models; give one or one each")
        first = models[0]
        for model in models[1:]:
            same = (
                model.adata is first.adata
                and model.loss.name == first.loss.name
                and model.loss_params == first.loss_params
                and model.input_scaling == first.input_scaling
                and {**model.module_params.to_dict(), "latent_dim": None}
                == {**first.module_params.to_dict(), "latent_dim": None}
            )
            if not same:
                raise ValueError(
                    "train_stacked trains models of one AnnData, loss and architecture that "
                    f"differ in latent_dim only; {model!r} differs from {first!r}"
                )
        train_params = TrainParams(**train_kwargs)
        resolved = resolve_device(device)
        results = fit_stacked(
            first.training_data(),
            first.loss,
            first.loss_params,
            [(model.module_params, seed) for model, seed in zip(models, seeds)],
            train_params,
            resolved,
            checkpoint=Path(checkpoint) if checkpoint is not None else None,
            checkpoint_interval=checkpoint_interval,
            stack_size=stack_size,
        )
        for model, seed, result in zip(models, seeds, results):
            model.train_params, model.device, model.seed = train_params, resolved, seed
            model._trained(result)
        return models

    def _trained(self, result: FitResult) -> Autoencoder:
        """Take a finished training's module, history and stopping into this model."""
        self.module, self.history = result.model, result.history
        self.best_epoch, self.stopped_by = result.best_epoch, result.stopped_by
        return self

    def training_data(self) -> CellData:
        """Return the registered AnnData as the trainer reads it.

        This holds the minibatches, the split, and the groups cosine_embedding draws negatives
        against; check that it can be trained on.
        """
        split = self.adata.obs[self.setup["split_key"]].astype(str)
        if not {"train", "val"} <= set(split):
            raise InputError(
                f"adata.obs[{self.setup['split_key']!r}] needs 'train' cells to learn from "
                "and 'val' cells to stop early on; it holds "
                f"{', '.join(sorted(set(split))) or 'no cells'}"
            )
        return self._cell_data(self.adata, negatives_group_key(self.adata, self.loss_params))

    @property
    def settings(self) -> dict[str, Any]:
        """The architecture and optimisation settings of the last training, flat."""
        self._require_trained()
        return {
            "learning_rate": self.train_params.learning_rate,
            "weight_decay": self.train_params.weight_decay,
            "batch_size": self.train_params.batch_size,
            "dropout": self.module_params.dropout,
            "hidden": list(self.module_params.hidden),
            "latent_dim": self.module_params.latent_dim,
            "ema_decay": self.train_params.ema_decay,
            "count_thinning": self.train_params.count_thinning,
            "input_masking": self.train_params.input_masking,
            "pca_path": self.module_params.pca_path,
        }

    @property
    def is_trained(self) -> bool:
        """Whether the model has been trained (or loaded trained)."""
        return self.module is not None

    # --- inference ---------------------------------------------------------------------

    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        indices: np.ndarray | None = None,
        key_added: str | None = None,
    ) -> np.ndarray:
        """Return the latent embedding (cells × ``latent_dim``) of ``adata``.

        ``adata`` defaults to the training AnnData; the embedding is of all cells or of
        ``indices``. With ``key_added`` (all cells only) it is
        also written to ``adata.obsm[key_added]``, as scanpy's tools do.
        """
        adata, rows = self._target(adata, indices)
        latent = latent_representation(self.module, self._cell_data(adata), rows, self.device)
        if key_added is not None:
            if indices is not None:
                raise ValueError("key_added writes all cells' embedding; leave indices=None")
            adata.obsm[key_added] = latent
        return latent

    def get_reconstruction(
        self,
        adata: ad.AnnData | None = None,
        indices: np.ndarray | None = None,
        space: Literal["expression", "counts"] = "expression",
    ) -> np.ndarray:
        """Reconstructions (cells × genes, dense float32) of all cells or of ``indices``.

        ``space="expression"``: log1p(normalized expression), the space every model is scored
        in (z-scoring undone; count models give log1p(E[c] / ℓ · target_sum)).
        ``space="counts"``: expected raw counts E[c] (count models: μ, or (1 − π)·μ for
        ``zinb``; expression models: (exp(x̂) − 1)·ℓ / target_sum).
        """
        if space not in ("expression", "counts"):
            raise ValueError(f"space={space!r}; use 'expression' or 'counts'")
        adata, rows = self._target(adata, indices)
        return reconstruction(
            self.module, self._cell_data(adata), rows, self.device, counts=space == "counts"
        )

    # --- persistence -------------------------------------------------------------------

    def save(self, dir_path: str | Path, overwrite: bool = False) -> None:
        """Write the trained model to ``dir_path``, atomically.

        Write ``model.pt`` (weights and every setting; loadable with ``weights_only``) and
        ``history.tsv`` (per epoch).
        """
        self._require_trained()
        directory = Path(dir_path)
        if not overwrite and (directory / MODEL_FILE).exists():
            raise FileExistsError(f"{directory / MODEL_FILE} exists; pass overwrite=True")
        result = FitResult(self.module, self.history, self.best_epoch, self.stopped_by)
        # Both files appear together or not at all (renamed only once both are written).
        with (
            atomic_path(directory / HISTORY_FILE) as history,
            atomic_path(directory / MODEL_FILE) as model_file,
        ):
            self.history.to_csv(history, sep="\t", index=False)
            save_model(
                model_file,
                result,
                {
                    "loss": self.loss.name,
                    "loss_params": self.loss_params,
                    "seed": self.seed,
                    "input_scaling": self.input_scaling,
                    "var_names": self.var_names,
                    "stopped_by": self.stopped_by,
                    "train_params": asdict(self.train_params),
                    "setup": dict(self.setup),
                    "target_sum": self.target_sum,
                    "train_mean": torch.from_numpy(self.scaling[0]),
                    "train_std": torch.from_numpy(self.scaling[1]),
                    "history": self.history.to_dict(orient="list"),
                },
            )

    @classmethod
    def load(
        cls, dir_path: str | Path, adata: ad.AnnData, device: str | torch.device = "auto"
    ) -> Autoencoder:
        """Load a saved model, attached to ``adata``.

        ``adata`` must have the same genes in the same order as the training data; it is
        registered with the saved setup if it is not registered yet.
        """
        device = resolve_device(device)
        module, saved = load_model(Path(dir_path) / MODEL_FILE, device)
        check_genes(adata, saved["var_names"], Path(dir_path))
        if SETUP_KEY not in adata.uns:
            setup = saved["setup"]
            cls.setup_anndata(
                adata,
                layer=setup["layer"],
                labels_key=setup["labels_key"] if setup["labels_key"] in adata.obs else None,
                split_key=setup["split_key"],
                library_size_key=setup["library_size_key"],
                target_sum=saved["target_sum"],
            )
        params = module.params
        model = cls(
            adata,
            saved["loss"],
            saved["loss_params"],
            hidden=params.hidden,
            latent_dim=params.latent_dim,
            dropout=params.dropout,
            batch_norm=params.batch_norm,
            input_scaling=saved["input_scaling"],
            pca_path=params.pca_path,
        )
        model.module, model.device = module, device
        # The training data's gene moments and target, not those of the AnnData given here.
        model.scaling = (saved["train_mean"].numpy(), saved["train_std"].numpy())
        model.target_sum = float(saved["target_sum"])
        model.history = pd.DataFrame(saved["history"])
        model.train_params = TrainParams(**saved["train_params"])
        model.seed, model.best_epoch = saved["seed"], saved["best_epoch"]
        model.stopped_by = saved["stopped_by"]
        return model

    # --- internals ---------------------------------------------------------------------

    def _cell_data(self, adata: ad.AnnData, group_key: str | None = None) -> CellData:
        setup = setup_of(adata)
        return CellData(
            adata,
            self.input_scaling,
            group_key=group_key,
            counts_layer=setup["layer"],
            split_key=setup["split_key"],
            library_size_key=setup["library_size_key"],
            scaling=self.scaling,
            target_sum=self.target_sum,
        )

    def _target(
        self, adata: ad.AnnData | None, indices: np.ndarray | None
    ) -> tuple[ad.AnnData, np.ndarray]:
        self._require_trained()
        adata = self.adata if adata is None else adata
        if adata is not self.adata:
            check_genes(adata, self.var_names, "this model")
        rows = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        return adata, rows

    def _require_trained(self) -> None:
        if self.module is None:
            raise RuntimeError("the model is not trained yet; call model.train() first")
