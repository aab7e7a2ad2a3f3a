"""Which axis of an input holds the cells, decided from the evidence in its names.

A genes × cells table (the commonest layout on GEO, and what R writes) read as cells × genes
trains, scores and summarizes the wrong matrix without an error. So before any job trains,
the names of both stored axes are read for evidence:

* **gene names**: Ensembl gene IDs (``ENSG00000141510``, ``ENSMUSG…``), or at least
  :data:`MIN_MITO_GENES` names starting with a mitochondrial prefix (the configured one, or
  one of :data:`MITO_PREFIXES`, e.g. ``MT-ND1``, ``mt-Co1``, R's ``MT.ND1``);
* **cell barcodes**: names holding a run of at least 12 bases ``[ACGT]`` (10x, Drop-seq and
  most plate barcodes, with or without a sample prefix or a ``-1`` suffix);
* **the label column**: ``label_key`` among the annotations of the rows (cells) or of the
  columns (genes).

:func:`decide` turns the evidence and ``transpose`` (``auto``, true or false) into an
:class:`Orientation`, or an :class:`~scae.config.InputError` naming the evidence and the fix:

* evidence one way, ``auto``: the matrix is read that way (transposed when genes are rows),
  and the log and ``summary.md`` say why;
* evidence one way, ``transpose`` set the other way: refused (a confident answer about the
  wrong matrix is worse than none);
* evidence both ways: refused under ``auto``; an explicit setting is followed;
* no evidence: read as stored (or as ``transpose`` says), and ``summary.md`` says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import h5py
import numpy as np
import pandas as pd

from .config import InputError, format_of

Transpose = Literal["auto"] | bool

#: Ensembl gene IDs of any species (``ENSG…`` human, ``ENSMUSG…`` mouse), version optional.
ENSEMBL_GENE = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
#: A cell barcode inside a name: 12 or more bases (10x v1 barcodes have 14, v2/v3 16).
BARCODE = re.compile(r"[ACGT]{12,}")
#: Mitochondrial gene prefixes of the common references (case-sensitive): human ``MT-``,
#: mouse ``mt-``, R's ``make.names`` of them ``MT.``/``mt.``, Drosophila ``mt:``.
MITO_PREFIXES = ("MT-", "mt-", "MT.", "mt.", "mt:")
#: Names starting with a mitochondrial prefix that make an axis genes (13 in human and mouse
#: mtDNA's protein-coding genes; fewer could be chance).
MIN_MITO_GENES = 3
#: Fraction of an axis's names that must be Ensembl IDs or barcodes to count as evidence.
MIN_FRACTION = 0.5
#: Names per axis looked at (evenly spaced): enough for the fractions above, cheap on an atlas.
SAMPLE = 5000


def _examples(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", …" if len(names) > n else "")


def _sample(names: Iterable[str]) -> list[str]:
    names = [str(name) for name in names]
    if len(names) <= SAMPLE:
        return names
    return [names[i] for i in np.linspace(0, len(names) - 1, SAMPLE).astype(int)]


def gene_evidence(names: Iterable[str], mito_prefix: str | None = None) -> str | None:
    """Return why ``names`` look like gene names (Ensembl IDs or mitochondrial genes), or None.

    ``mito_prefix`` is matched case-insensitively (as the QC does), the known prefixes of
    :data:`MITO_PREFIXES` as written.
    """
    names = list(names)
    sample = _sample(names)
    ensembl = [name for name in sample if ENSEMBL_GENE.match(name)]
    if sample and len(ensembl) >= MIN_FRACTION * len(sample):
        return f"{len(ensembl)} of {len(sample)} names are Ensembl gene IDs ({_examples(ensembl)})"
    upper = (mito_prefix or "").upper()
    mito = [
        str(name)
        for name in names
        if (upper and str(name).upper().startswith(upper)) or str(name).startswith(MITO_PREFIXES)
    ]
    if len(mito) >= MIN_MITO_GENES:
        return f"{len(mito)} names are mitochondrial genes ({_examples(mito)})"
    return None


def barcode_evidence(names: Iterable[str]) -> str | None:
    """Return why ``names`` look like cell barcodes (a run of ≥ 12 bases in most), or None."""
    sample = _sample(names)
    barcodes = [name for name in sample if BARCODE.search(name)]
    if sample and len(barcodes) >= MIN_FRACTION * len(sample):
        return f"{len(barcodes)} of {len(sample)} names are cell barcodes ({_examples(barcodes)})"
    return None


@dataclass(frozen=True)
class StoredNames:
    """The names and annotation columns of a matrix's two stored axes, as the file has them."""

    rows: pd.Index
    columns: pd.Index
    row_annotations: tuple[str, ...] = ()
    column_annotations: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evidence:
    """What the stored names say: reasons the rows are cells, and reasons they are genes."""

    rows_are_cells: tuple[str, ...] = ()
    rows_are_genes: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, names: StoredNames, mito_prefix: str | None = None, label_key: str | None = None
    ) -> Evidence:
        """Collect the evidence in ``names`` (see the module docstring)."""
        cells, genes = [], []
        for axis, axis_names, to in (
            ("row", names.rows, (genes, cells)),
            ("column", names.columns, (cells, genes)),
        ):
            if reason := gene_evidence(axis_names, mito_prefix):
                to[0].append(f"{axis}s: {reason}")
            if reason := barcode_evidence(axis_names):
                to[1].append(f"{axis}s: {reason}")
        if label_key and label_key in names.row_annotations:
            cells.append(f"the label column {label_key!r} annotates the rows")
        if label_key and label_key in names.column_annotations:
            genes.append(f"the label column {label_key!r} annotates the columns")
        return cls(tuple(cells), tuple(genes))


@dataclass(frozen=True)
class Orientation:
    """How a matrix was read: whether its stored rows were genes (so it was transposed), why."""

    transposed: bool
    #: "evidence" (the names decided), "config" (``transpose`` set, no evidence against it)
    #: or "default" (no evidence either way, ``auto``: read as stored).
    decided_by: Literal["evidence", "config", "default"]
    evidence: Evidence = field(default_factory=Evidence)

    def sentence(self) -> str:
        """Return the orientation in words, with the evidence it rests on (for summary.md)."""
        stored = "genes × cells, transposed" if self.transposed else "cells × genes"
        found = self.evidence.rows_are_genes if self.transposed else self.evidence.rows_are_cells
        against = self.evidence.rows_are_cells if self.transposed else self.evidence.rows_are_genes
        if self.decided_by == "evidence":
            why = f"from its names ({'; '.join(found)})"
        elif self.decided_by == "config":
            why = f"as `transpose: {str(self.transposed).lower()}` says"
            if against:
                why += f", over names that point both ways ({'; '.join(found + against)})"
            elif found:
                why += f", and its names agree ({'; '.join(found)})"
        else:
            why = "no evidence either way in its names (no gene IDs, mitochondrial genes or "
            why += "cell barcodes): read as stored, cells as rows; check that they are"
        return f"Input read as {stored}, {why}."

    def record(self) -> dict:
        """Return the orientation as plain data (for ``uns['scae']['orientation']``)."""
        return {
            "transposed": self.transposed,
            "decided_by": self.decided_by,
            "rows_are_cells": list(self.evidence.rows_are_cells),
            "rows_are_genes": list(self.evidence.rows_are_genes),
            "sentence": self.sentence(),
        }


def decide(evidence: Evidence, transpose: Transpose, source: str, dataset: str) -> Orientation:
    """Return how to read a matrix, given the ``evidence`` of its names and ``transpose``.

    Raises
    ------
    InputError
        When the evidence contradicts an explicit ``transpose``, or points both ways under
        ``auto``; the message names the evidence and the setting to change.
    """
    key = f"datasets.{dataset}.transpose"
    cells, genes = evidence.rows_are_cells, evidence.rows_are_genes
    if transpose == "auto":
        if cells and genes:
            raise InputError(
                f"{source}: dataset {dataset!r}: the names point both ways, rows as cells "
                f"({'; '.join(cells)}) and rows as genes ({'; '.join(genes)}); set {key}: "
                "true if the rows are genes, false if they are cells"
            )
        if cells or genes:
            return Orientation(bool(genes), "evidence", evidence)
        return Orientation(False, "default", evidence)
    against = cells if transpose else genes
    if against and not (genes if transpose else cells):
        stored = "cells" if transpose else "genes"
        raise InputError(
            f"{source}: dataset {dataset!r} has {key}: {str(transpose).lower()}, but its rows "
            f"are {stored} ({'; '.join(against)}); set {key}: "
            f"{str(not transpose).lower()} (or auto, which reads this evidence)"
        )
    return Orientation(bool(transpose), "config", evidence)


def planned_orientation(
    path: str,
    dataset: str,
    counts: str = "X",
    transpose: Transpose = "auto",
    mito_prefix: str | None = "MT-",
    label_key: str | None = None,
) -> Orientation | None:
    """Decide a dataset's orientation from its file's metadata, before any job runs.

    What ``snakemake -n`` checks: :func:`decide` on the names
    :func:`stored_names` reads cheaply; None where they cannot be read so
    (the 10x formats; preprocess decides from the same names when it reads the file).

    Raises
    ------
    InputError
        As :func:`decide`.
    """
    names = stored_names(path, counts)
    if names is None:
        return None
    return decide(Evidence.of(names, mito_prefix, label_key), transpose, path, dataset)


class TableLayout(NamedTuple):
    """How a delimited table is laid out (:func:`table_layout`)."""

    #: Whether the row names come as pandas' implicit index (a header one field short).
    implicit: bool
    #: The leading text columns: the row names (unless implicit), then descriptions.
    text: list[str]
    #: The header's other columns: one per count column.
    count_columns: list[str]


def table_layout(path: Path, sep: str) -> TableLayout:
    """Return how a table's first rows lay it out: row names, text and count columns.

    R's ``write.table`` writes one header field fewer than each row holds: pandas then takes
    the first field of every row as the index. Otherwise the leading columns whose values are
    not numbers (in the first rows) are the row names and, after them, descriptions (a GEO
    table's gene description column); a table without any has no row names.
    """
    head = pd.read_csv(path, sep=sep, nrows=200)
    implicit = not isinstance(head.index, pd.RangeIndex)
    text = []
    for column in head.columns:
        if pd.api.types.is_numeric_dtype(head[column]):
            break
        text.append(str(column))
    return TableLayout(implicit, text, [str(c) for c in head.columns if str(c) not in text])


def loom_names(attrs: h5py.Group, candidates: tuple[str, ...]) -> str | None:
    """Return the first of ``candidates`` that a loom file's ``row_attrs``/``col_attrs`` hold."""
    return next((name for name in candidates if name in attrs), None)


#: Where loom files keep cell and gene names (loompy and velocyto; scanpy's write_loom).
LOOM_CELL_NAMES = ("CellID", "obs_names", "cell_names", "cells")
LOOM_GENE_NAMES = ("Gene", "var_names", "gene_names", "genes", "Accession")


#: Rows of a text table whose names :func:`stored_names` reads (all of a genes × cells table),
#: and the fields it may parse for them: every line is parsed whole, so a wide table (cells ×
#: 30,000 genes) gets fewer rows, its header being evidence enough. Preprocess reads every
#: name and decides again.
NAME_ROWS = 100_000
NAME_FIELDS = 1 << 25


def stored_names(path: str | Path, counts: str = "X") -> StoredNames | None:
    """Return the names of the two axes of a dataset's counts as its reader gives them, cheaply.

    From metadata for ``.h5ad``, ``.zarr`` and ``.loom`` (annotation indices, read with h5py
    or zarr: no anndata at Snakemake's parse step), from the header and the first field of up
    to :data:`NAME_ROWS` rows (at most :data:`NAME_FIELDS` fields) for text tables; None for
    the 10x formats (their layout fixes the orientation) and for what cannot be read here (its
    reader reports it).
    """
    path = Path(path)
    try:
        kind = format_of(path)
        if kind in (".csv", ".tsv", ".txt"):
            sep = "," if kind == ".csv" else "\t"
            layout = table_layout(path, sep)
            n_fields = len(layout.text) + len(layout.count_columns)
            rows = max(1_000, min(NAME_ROWS, NAME_FIELDS // max(n_fields, 1)))
            first = pd.read_csv(
                path, sep=sep, header=None, skiprows=1, usecols=[0], nrows=rows, dtype=str
            )
            return StoredNames(pd.Index(first[0]), pd.Index(layout.count_columns))
        if kind == ".loom":
            with h5py.File(path, "r") as file:
                cells, genes = file["col_attrs"], file["row_attrs"]
                cell_key = loom_names(cells, LOOM_CELL_NAMES)
                gene_key = loom_names(genes, LOOM_GENE_NAMES)
                return StoredNames(
                    _strings(cells[cell_key]) if cell_key else pd.Index([]),
                    _strings(genes[gene_key]) if gene_key else pd.Index([]),
                    tuple(key for key in cells if key != cell_key),
                    tuple(key for key in genes if key != gene_key),
                )
        if kind == ".h5ad":
            with h5py.File(path, "r") as file:
                return _anndata_names(file, counts)
        if kind == ".zarr":
            import zarr

            return _anndata_names(zarr.open(path, mode="r"), counts)
    except Exception:  # (its reader reports an unreadable file, naming it)
        return None
    return None


def _strings(array) -> pd.Index:
    """Return an HDF5 or zarr array of names as an Index of str (bytes decoded)."""
    values = array.asstr()[:] if isinstance(array, h5py.Dataset) else array[:]
    return pd.Index(np.asarray(values, dtype=object)).astype(str)


def _anndata_names(store, counts: str) -> StoredNames:
    """Return the obs and var names and annotation columns of an ``.h5ad`` or ``.zarr``."""
    var = store["raw/var"] if counts == "raw" and "raw" in store else store["var"]
    obs = store["obs"]
    return StoredNames(
        _strings(obs[obs.attrs["_index"]]),
        _strings(var[var.attrs["_index"]]),
        tuple(obs.attrs.get("column-order", ())),
        tuple(var.attrs.get("column-order", ())),
    )
