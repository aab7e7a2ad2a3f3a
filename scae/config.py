"""Configuration checks cheap enough for Snakemake's parse step (no scanpy or torch import)."""

from __future__ import annotations

from pathlib import Path

#: File suffixes :func:`read_counts` accepts, with the reader used for each.
SUPPORTED_FORMATS = {
    ".h5ad": "AnnData (anndata.read_h5ad)",
    ".h5": "10x Genomics HDF5 (scanpy.read_10x_h5)",
    "<directory>": "10x Genomics matrix.mtx(.gz)/features/barcodes (scanpy.read_10x_mtx)",
    ".csv": "comma-separated table (scanpy.read_csv)",
    ".tsv": "tab-separated table (scanpy.read_text)",
    ".txt": "tab-separated table (scanpy.read_text)",
}


class InputError(ValueError):
    """Bad user input: the message names the file, the field and the fix."""


def format_of(path: str | Path) -> str:
    """The key of :data:`SUPPORTED_FORMATS` for ``path`` (``.gz`` is looked through)."""
    path = Path(path)
    if path.is_dir():
        return "<directory>"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in SUPPORTED_FORMATS:
        accepted = ", ".join(SUPPORTED_FORMATS)
        raise InputError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; accepted formats are "
            f"{accepted} (a 10x directory holds matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz)"
        )
    return suffix


def check_input_path(path: str | Path, dataset: str) -> None:
    """Fail early, before any job runs, on a missing or unsupported input."""
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"dataset {dataset!r}: input file {path} does not exist; fix "
            f"datasets.{dataset}.path in config/config.yaml (paths are relative to the "
            "directory you run snakemake in)"
        )
    format_of(path)


#: Reference reconstructions evaluated beside every autoencoder (see :mod:`scae.baselines`).
BASELINES = ("mean", "pca", "library_size")
#: Added under molecular cross-validation: the noisy training molecules themselves.
MCV_BASELINES = (*BASELINES, "no_denoising")
#: Suffix of the dataset variant trained on binomially thinned molecules (:mod:`scae.mcv`);
#: dataset names cannot contain a dot, so it never collides with a configured name.
MCV_SUFFIX = ".mcv"
#: Losses that model raw counts (their registry entries have a count ``output``).
COUNT_LOSSES = ("poisson", "nb", "zinb")
