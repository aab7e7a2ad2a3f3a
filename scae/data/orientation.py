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
from typing import Literal

import numpy as np
import pandas as pd

from ..config import InputError

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
    :func:`scae.data.readers.stored_names` reads cheaply; None where they cannot be read so
    (the 10x formats; preprocess decides from the same names when it reads the file).

    Raises
    ------
    InputError
        As :func:`decide`.
    """
    from .readers import stored_names

    names = stored_names(path, counts)
    if names is None:
        return None
    return decide(Evidence.of(names, mito_prefix, label_key), transpose, path, dataset)
