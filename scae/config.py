"""Configuration checks cheap enough for Snakemake's parse step (no scanpy or torch import)."""

from __future__ import annotations

import numbers
import operator
import os
from pathlib import Path

#: File suffixes :func:`read_counts` accepts, with the reader used for each.
SUPPORTED_FORMATS = {
    ".h5ad": "AnnData (anndata.read_h5ad)",
    ".zarr": "AnnData zarr store (anndata.read_zarr)",
    ".loom": "loom file (anndata.io.read_loom; cells in columns, as loompy writes them)",
    ".h5": "10x Genomics HDF5 (scanpy.read_10x_h5)",
    "<directory>": "10x Genomics matrix.mtx(.gz)/features/barcodes (scanpy.read_10x_mtx)",
    ".csv": "comma-separated table, optionally .gz (pandas, a block of rows at a time)",
    ".tsv": "tab-separated table, optionally .gz (pandas, a block of rows at a time)",
    ".txt": "tab-separated table, optionally .gz (pandas, a block of rows at a time)",
}


class InputError(ValueError):
    """Bad user input: the message names the file, the field and the fix."""


#: JSON Schema's range keywords, as config/schema.yaml states a number's limits.
RANGE_KEYWORDS = {
    "minimum": (operator.ge, ">="),
    "exclusiveMinimum": (operator.gt, ">"),
    "maximum": (operator.le, "<="),
    "exclusiveMaximum": (operator.lt, "<"),
}


def check_number(where: str, value: object, limits: dict[str, float], integer: bool) -> None:
    """Raise InputError unless ``value`` is a number within ``limits``.

    ``value`` must be an integer if ``integer`` (never a bool), within ``limits``, given in
    :data:`RANGE_KEYWORDS` as the schema gives them, so the API refuses what the workflow's
    schema refuses. ``where`` names the setting.
    """
    kind = numbers.Integral if integer else numbers.Real  # NumPy's scalars included
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InputError(f"{where}={value!r}; it takes {'an integer' if integer else 'a number'}")
    if not all(RANGE_KEYWORDS[k][0](value, bound) for k, bound in limits.items()):
        rule = " and ".join(f"{RANGE_KEYWORDS[k][1]} {bound}" for k, bound in limits.items())
        raise InputError(f"{where}={value!r}; it must be {rule}")


def format_of(path: str | Path) -> str:
    """Return the key of :data:`SUPPORTED_FORMATS` for ``path`` (``.gz`` is looked through)."""
    path = Path(path)
    if path.suffix.lower() == ".zarr":  # a directory, or a zipped store
        return ".zarr"
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
    fix = f"fix datasets.{dataset}.path in config/config.yaml"
    try:
        kind = format_of(path)
    except InputError as err:
        raise InputError(f"dataset {dataset!r}: {err}; {fix}") from None
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise InputError(
            f"dataset {dataset!r}: {path} is not readable (permission denied); {fix} "
            "or make the file readable (chmod a+r)"
        )
    if kind == "<directory>":
        if not any((path / name).exists() for name in ("matrix.mtx.gz", "matrix.mtx")):
            raise InputError(
                f"dataset {dataset!r}: directory {path} holds no matrix.mtx(.gz); accepted "
                f"formats are {', '.join(SUPPORTED_FORMATS)} (a 10x directory holds "
                f"matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz); {fix}"
            )
    elif kind in (".h5ad", ".h5", ".loom") and path.suffix.lower() != ".gz" and not _is_hdf5(path):
        raise InputError(
            f"dataset {dataset!r}: {path} is not an HDF5 file, so not a valid {kind} "
            f"({SUPPORTED_FORMATS[kind]}); the file is corrupt, truncated or of another format "
            f"(accepted formats are {', '.join(SUPPORTED_FORMATS)}); re-download or re-export "
            f"it, or {fix}"
        )


#: The 8-byte signature of an HDF5 file, at offset 0 or after a user block of 512·2^k bytes.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: Path) -> bool:
    """Whether ``path`` starts with the HDF5 signature (cheap: reads a few bytes)."""
    size = path.stat().st_size
    with open(path, "rb") as stream:
        for offset in (0, 512, 1024, 2048, 4096):
            if offset + len(HDF5_SIGNATURE) > size:
                break
            stream.seek(offset)
            if stream.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return True
    return False


def describe_schema_error(error, configfile: str = "your config file") -> str:
    """One line for a jsonschema ``ValidationError``: the key, what is wrong, what is allowed."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    where = where.lstrip(".") or "(top level)"
    allowed_keys = (
        ", ".join(error.schema.get("properties", {})) if isinstance(error.schema, dict) else ""
    )
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        unknown = ", ".join(repr(k) for k in error.instance if k not in known)
        problem = f"unknown key {unknown} under {where}; allowed keys: {allowed_keys}"
    elif error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        problem = f"{where} = {error.instance!r} is not allowed; allowed values: {allowed}"
    elif error.validator == "type":
        problem = (
            f"{where} = {error.instance!r} has the wrong type; expected {error.validator_value}"
        )
    elif error.validator == "required":
        problem = f"{where}: {error.message}"
    else:
        problem = f"{where} = {error.instance!r}: {error.message}"
    return (
        f"invalid configuration: {problem}; fix it in {configfile} "
        "(config/schema.yaml lists every key, its type and default)"
    )


#: Suffix of the dataset variant trained on binomially thinned molecules (:mod:`scae.data.mcv`);
#: dataset names cannot contain a dot, so it never collides with a configured name.
MCV_SUFFIX = ".mcv"
#: obs column of the training-cell clusters used for cosine_embedding's cluster negatives.
CLUSTER_KEY = "scae_cluster"
#: Genes whose training sd is below this are only centred when z-scored (input_scaling and
#: the zscored_cosine metric), not blown up.
MIN_STD = 1e-3
