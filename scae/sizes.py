"""How many cells and genes the later stages need, checked before they run.

Each stage sets a floor (the reason is part of every error message):

* **training cells** ≥ ``latent_dim`` + 1: the PCA baseline at the autoencoder's rank k is
  an ARPACK SVD of the training cells, which needs k < min(cells, genes); with
  ``negative_sampling: cluster``, ≥ 16, since the training-cell Leiden graph joins each cell
  to its 15 nearest neighbours;
* **validation cells** ≥ 1: early stopping, tuning and ``pca_mcv_rank`` score them;
* **test cells** ≥ 4: every metric is a mean over test cells, the library-size breakdown
  splits them into quartiles, and the paired intervals need cell-to-cell variance;
* **genes** ≥ 10 after QC: the per-gene MSE breakdown splits them into deciles.

Snakemake's parse step (``snakemake -n``) checks the input's size from its metadata alone
(:func:`input_shape`, h5py only: no anndata, scanpy or torch there) against the sum of these
floors, a necessary condition whatever QC and the split do; preprocessing then checks the
split it made (:meth:`SizeNeeds.check_split`), before any training job runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import h5py

from .config import InputError, format_of

#: Neighbours of the training-cell Leiden graph (scanpy's default ``n_neighbors``).
CLUSTER_NEIGHBOURS = 15
#: Test cells: the library-size quartiles of :func:`scae.evaluation.metrics.breakdowns`.
MIN_TEST_CELLS = 4
#: Validation cells: early stopping needs one cell to score.
MIN_VAL_CELLS = 1
#: Genes: the expression deciles of :func:`scae.evaluation.metrics.breakdowns`.
MIN_GENES = 10


@dataclass(frozen=True)
class SizeNeeds:
    """What the configured later stages need of a preprocessed dataset.

    ``latent_dim`` is the largest latent rank trained (the PCA baseline's rank), ``clusters``
    whether training-cell clusters are built (``negative_sampling: cluster``).
    """

    latent_dim: int = 32
    clusters: bool = False

    def minimums(self) -> dict[str, int]:
        """Return the fewest cells of each split (``train``, ``val``, ``test``)."""
        train = self.latent_dim + 1
        if self.clusters:
            train = max(train, CLUSTER_NEIGHBOURS + 1)
        return {"train": train, "val": MIN_VAL_CELLS, "test": MIN_TEST_CELLS}

    def reasons(self) -> str:
        """Why each floor is what it is, for error messages."""
        need = self.minimums()
        train = [f"model.latent_dim = {self.latent_dim} needs latent_dim + 1 for PCA at that rank"]
        if self.clusters:
            train.append(
                f"negative_sampling: cluster needs {CLUSTER_NEIGHBOURS + 1} for "
                "the training-cell neighbour graph"
            )
        return (
            f"at least {need['train']} training cells ({'; '.join(train)}), "
            f"{need['val']} validation cell (early stopping) and {need['test']} test cells "
            "(library-size quartiles and intervals over cells), and "
            f"{MIN_GENES} genes (expression deciles)"
        )

    def cells_in_all(self, test_fraction: float, val_fraction: float) -> int:
        """About how many cells after QC give every split its minimum (unstratified split)."""
        need = self.minimums()
        train_fraction = 1 - test_fraction - val_fraction
        return max(
            math.ceil(need["train"] / train_fraction),
            math.ceil((need["test"] - 0.5) / test_fraction),
            math.ceil((need["val"] - 0.5) / val_fraction),
        )

    def check_input(self, n_cells: int, n_genes: int, source: str, dataset: str) -> None:
        """Refuse an input too small for any QC and split (``snakemake -n`` calls this)."""
        need = self.minimums()
        total = sum(need.values())
        if n_cells < total or n_genes < MIN_GENES:
            raise InputError(
                f"{source}: dataset {dataset!r} has {n_cells} cells × {n_genes} genes, too "
                f"few before QC: later stages need {self.reasons()}, so {total} cells at the "
                f"very least; use a larger dataset, lower model.latent_dim, or disable "
                f"datasets.{dataset}"
            )

    def check_split(
        self,
        split_sizes: dict[str, int],
        n_genes: int,
        dataset: str,
        qc: str,
        test_fraction: float,
        val_fraction: float,
    ) -> None:
        """Refuse a split or a gene count that the later stages cannot use.

        ``split_sizes`` holds the cells per ``train``/``val``/``test`` after QC; ``qc``
        describes the cells QC kept, for the message.
        """
        need = self.minimums()
        short = [
            f"{split_sizes.get(name, 0)} {word} cells (need {need[name]})"
            for name, word in (("train", "training"), ("val", "validation"), ("test", "test"))
            if split_sizes.get(name, 0) < need[name]
        ]
        if n_genes < MIN_GENES:
            short.append(f"{n_genes} genes after the min_cells filter (need {MIN_GENES})")
        if not short:
            return
        sizes = " / ".join(f"{name} {split_sizes.get(name, 0)}" for name in need)
        raise InputError(
            f"dataset {dataset!r}: too few cells for the later stages after QC and the split: "
            f"{', '.join(short)} ({qc}; split {sizes}). They need {self.reasons()}. Fix: "
            f"use more cells (about {self.cells_in_all(test_fraction, val_fraction)} after QC "
            f"at test_fraction {test_fraction} and val_fraction {val_fraction}), lower the QC "
            "thresholds in preprocess, or lower model.latent_dim"
        )


def input_shape(path: str | Path, counts: str = "X") -> tuple[int, int] | None:
    """Return the (cells, features) shape of a dataset's counts, from metadata alone.

    The counts of an ``.h5ad`` (CSR, CSC or dense, in ``X``, ``raw`` or a layer) or of a
    Cell Ranger ≥ 3 ``.h5`` (all feature types): nothing is read but shapes and attributes.
    None for other formats, layouts and unreadable files (their readers report those).
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as file:
            if format_of(path) == ".h5":
                n_features, n_cells = file["matrix/shape"][:]
                return int(n_cells), int(n_features)
            element = file[{"X": "X", "raw": "raw/X"}.get(counts, f"layers/{counts}")]
            shape = (
                element.shape if isinstance(element, h5py.Dataset) else element.attrs.get("shape")
            )
            if shape is None or len(shape) != 2:
                return None
            return int(shape[0]), int(shape[1])
    except (OSError, KeyError, ValueError, TypeError, InputError):
        return None
