"""Every model the workflow compares, in one registry: losses' autoencoders, baselines, peers.

Tables, figures, the rules and the scripts ask this registry what a model is — whether it is
fit once per latent rank, once per training seed, on counts or on normalised expression, in
which conda environment, by which function — instead of reading it off the model's name.
Read by Snakemake's parse step, so it imports neither torch nor anndata.

An autoencoder is named after its loss (``mse``, ``nb``); what a loss needs of the data
(integer counts, training-cell clusters) is declared once, in :data:`LOSS_NEEDS`, and
:mod:`scae.module.losses` checks its registry against it. A baseline is named
``baseline_<name>`` in tables (``baseline_pca``), its files lie under
``…/baseline/<name>`` (:mod:`scae.layout`), and its fit function is the entry of the same
name in :data:`scae.evaluation.baselines.BASELINE_FITS`.

A peer is a model the field already uses (scvi-tools' SCVI and LinearSCVI), trained on the
same training cells and scored beside the losses, never ranked among them
(:mod:`scae.peers` fits them, in their own conda env).

Adding a compared model: an entry here, its module (its fit function), its env file under
``envs/`` and its page in ``docs/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["autoencoder", "baseline", "peer"]
#: The dataset variants a model runs in: the dataset itself, its molecular cross-validation.
Variant = Literal["dataset", "mcv"]


@dataclass(frozen=True)
class ComparedModel:
    """One compared model: what it is, where it runs, and how the tables treat it."""

    #: How tables and figures name it (``mse``, ``baseline_pca``).
    name: str
    kind: Kind
    #: Fit at each latent rank (its files under ``k{rank}``), or once for every rank
    #: (``shared``): PCA has a rank, the mean profile none.
    ranked: bool
    #: One run per training seed, or one deterministic run (paired with every seed).
    seeded: bool
    #: What it is fit on: raw counts (``layers['counts']``) or normalised expression (``X``).
    trained_on: Literal["counts", "expression"]
    #: The conda env (``envs/<env>.yaml``) of the rule that fits it.
    env: str
    #: The dataset variants it runs in.
    variants: tuple[Variant, ...] = ("dataset", "mcv")
    #: What it is, in words (answers, docs, figures).
    description: str = ""
    #: The pip extra that installs what it needs (None: the core install), the module it
    #: imports and that module's distribution: a configured model whose module is missing is
    #: refused before any job runs.
    extra: str | None = None
    package: str | None = None
    distribution: str | None = None
    #: How the answer line names it (``scVI``).
    label: str = ""

    @property
    def short_name(self) -> str:
        """The name of its files (``pca`` for ``baseline_pca``; a loss's own name)."""
        return self.name.removeprefix("baseline_") if self.kind == "baseline" else self.name


def _baseline(name: str, ranked: bool, trained_on: str, variants, description: str):
    return ComparedModel(
        f"baseline_{name}", "baseline", ranked, False, trained_on, "scanpy", variants, description
    )


#: The baselines, by short name, in the order the tables list them.
BASELINES: dict[str, ComparedModel] = {
    model.short_name: model
    for model in (
        _baseline("mean", False, "expression", ("dataset", "mcv"), "the training-mean profile"),
        _baseline("pca", True, "expression", ("dataset", "mcv"), "PCA at the same rank"),
        _baseline(
            "library_size", False, "counts", ("dataset", "mcv"), "counts from library size alone"
        ),
        _baseline("no_denoising", False, "expression", ("mcv",), "the noisy input itself"),
        # its rank is MCV's choice, not the latent rank: one run, shared by every rank
        _baseline("pca_mcv_rank", False, "expression", ("mcv",), "PCA at the rank MCV chooses"),
    )
}


def _peer(name: str, label: str, description: str) -> ComparedModel:
    return ComparedModel(
        name,
        "peer",
        ranked=True,
        seeded=True,
        trained_on="counts",
        env="scvi",
        variants=("dataset",),
        description=description,
        extra="peers",
        package="scvi",
        distribution="scvi-tools",
        label=label,
    )


#: The peers, by name: each is trained per rank (n_latent = k) and seed on the training cells'
#: raw counts, stops early on the validation cells, and runs in envs/scvi.yaml.
PEERS: dict[str, ComparedModel] = {
    model.name: model
    for model in (
        _peer(
            "scvi",
            "scVI",
            "scvi-tools' SCVI: a variational autoencoder with a negative-binomial likelihood",
        ),
        _peer("ldvae", "LDVAE", "scvi-tools' LinearSCVI: scVI with a linear decoder"),
    )
}

#: What a loss needs of the data beyond normalised expression: ``counts`` (integer counts, for
#: a count likelihood) and ``clusters`` (training-cell clusters, for cosine_embedding's
#: ``negative_sampling: cluster``, a loss parameter: see :func:`needs_clusters`).
LOSS_NEEDS: dict[str, frozenset[str]] = {
    "mse": frozenset(),
    "cosine": frozenset(),
    "cosine_embedding": frozenset({"clusters"}),
    "mse_cosine": frozenset(),
    "pearson": frozenset(),
    "poisson": frozenset({"counts"}),
    "nb": frozenset({"counts"}),
    "zinb": frozenset({"counts"}),
}


def autoencoder(loss: str) -> ComparedModel:
    """Return the registry entry of the autoencoder trained with ``loss``."""
    counts = "counts" in LOSS_NEEDS.get(loss, frozenset())
    return ComparedModel(
        loss, "autoencoder", True, True, "counts" if counts else "expression", "torch"
    )


def compared(name: str) -> ComparedModel:
    """Return the entry of the model tables call ``name``: a baseline's, a peer's or a loss's."""
    for model in (*BASELINES.values(), *PEERS.values()):
        if model.name == name:
            return model
    return autoencoder(name)


def kind_of(name: str) -> Kind:
    """Return what the model tables call ``name`` is: ``autoencoder``, ``baseline`` or ``peer``."""
    return compared(name).kind


def baselines_in(variant: Variant) -> list[ComparedModel]:
    """Return the baselines that run in a dataset ``variant``, in table order."""
    return [model for model in BASELINES.values() if variant in model.variants]


def needs_counts(losses: list[str]) -> bool:
    """Whether any of ``losses`` needs integer counts (preprocessing then refuses fractions)."""
    return any("counts" in LOSS_NEEDS.get(loss, frozenset()) for loss in losses)


def needs_clusters(losses: list[str], loss_params: dict) -> bool:
    """Whether any of ``losses`` needs training-cell clusters with its ``loss_params``."""
    return any(
        "clusters" in LOSS_NEEDS.get(loss, frozenset())
        and loss_params.get(loss, {}).get("negative_sampling") == "cluster"
        for loss in losses
    )


def missing_packages(names: list[str]) -> list[str]:
    """Return a message for each configured model in ``names`` whose package is not importable.

    E.g. "peers: scvi needs scvi-tools: pip install -e '.[peers]' or run with --use-conda".
    """
    import importlib.util

    messages = []
    for name in names:
        model = compared(name)
        if model.package and importlib.util.find_spec(model.package) is None:
            messages.append(
                f"peers: {name} needs {model.distribution}: pip install -e '.[{model.extra}]' "
                "or run with --use-conda"
            )
    return messages
