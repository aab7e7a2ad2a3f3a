"""Settings of preprocessing, molecular cross-validation and depth thinning (defaults here)."""

from __future__ import annotations

from dataclasses import dataclass

from ..sizes import SizeNeeds

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PreprocessParams:
    """Preprocessing settings, mirroring ``config['preprocess']``."""

    min_genes: int = 200
    min_cells: int = 3
    max_pct_mito: float = 5.0
    target_sum: float = 1e4
    n_top_genes: int = 2000
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_seed: int = 0


@dataclass(frozen=True)
class MCVParams:
    """Molecular cross-validation: the fraction of molecules kept for training, and a seed."""

    train_fraction: float = 0.9
    seed: int = 0


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
