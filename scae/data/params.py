"""Settings of preprocessing, molecular cross-validation and depth thinning (defaults here)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import _schema
from ..sizes import SizeNeeds

SPLITS = ("train", "val", "test")
#: config/schema.yaml's defaults of the preprocess and mcv sections.
_PREPROCESS, _MCV = _schema.defaults("preprocess"), _schema.defaults("mcv")


@dataclass(frozen=True)
class PreprocessParams:
    """Preprocessing settings, mirroring ``config['preprocess']`` (defaults from its schema)."""

    min_genes: int = _PREPROCESS["min_genes"]
    min_cells: int = _PREPROCESS["min_cells"]
    max_pct_mito: float = float(_PREPROCESS["max_pct_mito"])
    target_sum: float = float(_PREPROCESS["target_sum"])
    n_top_genes: int = _PREPROCESS["n_top_genes"]
    test_fraction: float = _PREPROCESS["test_fraction"]
    val_fraction: float = _PREPROCESS["val_fraction"]
    split_seed: int = _PREPROCESS["split_seed"]


@dataclass(frozen=True)
class MCVParams:
    """Molecular cross-validation: the fraction of molecules kept for training, and a seed."""

    train_fraction: float = _MCV["train_fraction"]
    seed: int = _MCV["seed"]


#: Entropy that keeps the thinning's random stream apart from the molecule split's
#: (``mcv.seed``): a thinned dataset's MCV variant draws both, often with the same seed.
THINNING_STREAM = 0x7468696E


@dataclass(frozen=True)
class Thinning:
    """A depth variant of a dataset, thinned before QC.

    Each molecule is kept with probability ``fraction`` (:func:`scae.data.mcv.binomial_thin`,
    seeded by ``seed``).
    """

    fraction: float
    seed: int = 0


@dataclass(frozen=True)
class DatasetOptions:
    """What preprocessing needs to know of a dataset besides its counts.

    Besides the counts and the :class:`PreprocessParams`: its name (every error names it), the
    ``obs`` column of cell types to stratify the split by (None: none), the mitochondrial gene
    prefix (None: no mitochondrial QC), its molecular cross-validation and depth variants, and
    what the later stages need of the result (integer counts for a count loss, training-cell
    clusters for ``cluster`` negatives, the sizes of :class:`scae.sizes.SizeNeeds`).
    """

    dataset: str = "adata"
    label_key: str | None = None
    mito_prefix: str | None = "MT-"
    mcv: MCVParams | None = None
    thin: Thinning | None = None
    clusters: bool = False
    require_integers: bool = False
    needs: SizeNeeds | None = None
