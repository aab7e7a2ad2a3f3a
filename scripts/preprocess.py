"""Snakemake entry point: QC, split, normalize and select HVGs for one dataset, reading
.h5ad and 10x .h5 inputs a block of cells at a time (scae.data.open_counts)."""

from scae.config import MCV_SUFFIX
from scae.data import MCVParams, PreprocessParams, open_counts, preprocess_rows, validate_counts
from scae.io import atomic_path, rule_logging

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]):
    spec = sm.params.dataset
    name = sm.wildcards.dataset.removesuffix(MCV_SUFFIX)  # errors name the configured dataset
    with open_counts(sm.input[0], counts=spec["counts"], transpose=spec["transpose"]) as rows:
        validate_counts(rows, sm.input[0], name, sm.params.require_integers)
        result = preprocess_rows(
            rows,
            PreprocessParams(**sm.params.preprocess),
            dataset=sm.wildcards.dataset,
            label_key=spec["label_key"] or None,
            mito_prefix=spec["mito_prefix"] or None,
            mcv=MCVParams(sm.params.mcv["train_fraction"], sm.params.mcv["seed"])
            if sm.params.mcv
            else None,
            clusters=sm.params.clusters,
        )
    with atomic_path(sm.output[0]) as tmp:
        result.write_h5ad(tmp, compression="lzf")  # fast to read for every job
