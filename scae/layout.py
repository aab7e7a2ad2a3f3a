"""Where the workflow keeps each run's files.

The one definition that the rules' input functions, the scripts and the readers of finished
results share.

::

    results/{dataset}/{scope}/{kind}/{model}/{run}{suffix}
    results/{dataset}/{scope}/models/{loss}/seed{seed}/{model.pt,history.tsv}

``scope`` is ``k{rank}`` for the runs at a latent rank (autoencoders, PCA at that rank) and
``shared`` for the baselines without one (the mean profile, library size, MCV's); ``kind`` is
``embeddings``, ``reconstructions`` or ``metrics``; ``model`` a loss or ``baseline``; ``run``
``seed{seed}`` for an autoencoder or the baseline's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .registry import BASELINES

#: The scope of the baselines that have no latent rank.
SHARED = "shared"
#: Folder of a dataset's results.
RESULTS = "results"


def scope(rank: int | None) -> str:
    """``k{rank}``, or :data:`SHARED` for a run without a rank."""
    return SHARED if rank is None else f"k{rank}"


def run_file(dataset: str, scope_name: str, kind: str, model: str, run: str, suffix: str) -> str:
    """``results/{dataset}/{scope}/{kind}/{model}/{run}{suffix}``."""
    return f"{RESULTS}/{dataset}/{scope_name}/{kind}/{model}/{run}{suffix}"


def history_file(dataset: str, scope_name: str, loss: str, run: str) -> str:
    """Return the path of one autoencoder run's training history (``run``: ``seed{seed}``)."""
    return f"{RESULTS}/{dataset}/{scope_name}/models/{loss}/{run}/history.tsv"


@dataclass(frozen=True)
class RunPath:
    """The run a results file belongs to (:func:`parse`)."""

    dataset: str
    scope: str
    model: str
    run: str

    @property
    def rank(self) -> int | None:
        """The latent rank of the run, or None for a baseline without one (scope ``shared``)."""
        return None if self.scope == SHARED else int(self.scope.removeprefix("k"))

    @property
    def seed(self) -> int | None:
        """The seed of an autoencoder run (``seed{seed}``), or None for a baseline."""
        return int(self.run.removeprefix("seed")) if self.model != "baseline" else None

    @property
    def label(self) -> str:
        """How tables and figures name the run: the loss, or the baseline's registry name.

        ``baseline_pca`` for …/baseline/pca (:mod:`scae.registry`).
        """
        return BASELINES[self.run].name if self.model == "baseline" else self.model


def parse(path: str | Path) -> RunPath:
    """Return the run that a results file belongs to.

    The file is an embedding, reconstruction or metrics file, or a model folder's
    ``model.pt`` / ``history.tsv`` (the layout in the module docstring).
    """
    parts = Path(path).parts
    if parts[-1] in ("model.pt", "history.tsv"):  # .../{scope}/models/{loss}/seed{n}/file
        return RunPath(parts[-6], parts[-5], parts[-3], parts[-2])
    return RunPath(parts[-5], parts[-4], parts[-2], parts[-1].split(".")[0])
