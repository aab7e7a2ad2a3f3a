"""The size of a dataset's counts and the memory preprocessing it needs, from metadata alone.

:func:`count_input_size` reads a few attributes and shapes of an ``.h5ad`` or a Cell Ranger
``.h5`` (h5py only); :func:`preprocess_mem_mb` turns them into the ``mem_mb`` the preprocess
rule asks for, sized by the result, since :func:`scae.data.readers.open_counts` streams those
inputs a block of cells at a time.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from ..config import InputError, format_of


def count_input_size(path: str | Path, counts: str = "X") -> tuple[int, int, int] | None:
    """Return (cells, genes, stored entries) of a dataset's counts, from metadata alone.

    For an ``.h5ad`` (CSR counts) or a Cell Ranger ≥ 3 ``.h5``: nothing is read but a few
    attributes and shapes. None for other formats and layouts, or a file that cannot be read.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as file:
            if format_of(path) == ".h5":
                n_genes, n_cells = file["matrix/shape"][:]
                return int(n_cells), int(n_genes), int(file["matrix/data"].shape[0])
            element = {"X": "X", "raw": "raw/X"}.get(counts, f"layers/{counts}")
            element = file[element]
            if element.attrs.get("encoding-type") != "csr_matrix":
                return None
            n_cells, n_genes = element.attrs["shape"]
            return int(n_cells), int(n_genes), int(element["data"].shape[0])
    except (OSError, KeyError, ValueError, InputError):
        return None


def size_on_disk(path: str | Path) -> int:
    """Return the bytes of a file, or of every file under a directory (10x mtx, ``.zarr``)."""
    path = Path(path)
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size


def preprocess_mem_mb(
    path: str | Path, counts: str, n_top_genes: int, mcv: bool, read_whole: bool = False
) -> int:
    """Memory (MB) to request for preprocessing the dataset at ``path``.

    Streamed inputs (see :func:`count_input_size`): 1.5 GB for the interpreter, scanpy and
    the blocks being processed, plus the result — X and ``layers['counts']`` (and, with
    ``mcv``, the held-out molecules): 8 bytes per stored entry each — for an estimated
    nnz × min(1, 2 · n_top_genes / genes) entries (HVGs hold 0.9–1.4× their share of the
    entries in pbmc3k and zheng17) and 200 bytes of annotations per cell. Other inputs are
    read whole (as is a stored genes × cells matrix, ``read_whole``, which is transposed):
    2 GB + 20 × their size on disk.
    """
    size = None if read_whole else count_input_size(path, counts)
    if size is None:
        return int(2000 + 20 * size_on_disk(path) / 2**20)
    n_cells, n_genes, nnz = size
    entries = nnz * min(1.0, 2 * n_top_genes / max(n_genes, 1))
    per_entry = 8 * (3 if mcv else 2)
    return int(1500 + (entries * per_entry + 200 * n_cells) / 2**20)
