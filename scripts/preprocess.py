"""Snakemake entry point: QC, split, normalize and select HVGs for one dataset, reading
.h5ad and 10x .h5 inputs a block of cells at a time (scae.data.open_counts)."""

from scae.config import MCV_SUFFIX
from scae.data.params import DatasetOptions, MCVParams, PreprocessParams, Thinning
from scae.data.preprocess import preprocess_file
from scae.io import atomic_path, rule_logging
from scae.sizes import SizeNeeds

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    spec, mcv = sm.params.dataset, sm.params.mcv
    options = DatasetOptions(
        dataset=sm.wildcards.dataset.removesuffix(MCV_SUFFIX),  # errors name the configured one
        label_key=spec["label_key"] or None,
        mito_prefix=spec["mito_prefix"] or None,
        mcv=MCVParams(mcv["train_fraction"], mcv["seed"]) if mcv else None,
        thin=Thinning(**spec["thin"]) if "thin" in spec else None,
        clusters=sm.params.clusters,
        require_integers=sm.params.require_integers,
        needs=SizeNeeds(**sm.params.needs),
    )
    result = preprocess_file(
        sm.input[0],
        PreprocessParams(**sm.params.preprocess),
        options,
        counts=spec["counts"],
        transpose=spec["transpose"],
    )
    with atomic_path(sm.output[0]) as tmp:
        result.write_h5ad(tmp, compression="lzf")  # fast to read for every job
