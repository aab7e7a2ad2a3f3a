"""Data: reading counts, checking them, the cell split, preprocessing, MCV and depth variants.

Every step that learns from data (gene filter, HVGs, z-scoring, clusters) sees training cells
only; :mod:`scae.data.preprocess` states the order.
"""

from .checks import COUNT_TOLERANCE, validate_counts
from .params import SPLITS, DatasetOptions, MCVParams, PreprocessParams, Thinning
from .preprocess import preprocess, preprocess_file
from .readers import CountRows, open_counts, read_counts
from .split import stratified_split

__all__ = [
    "COUNT_TOLERANCE",
    "SPLITS",
    "CountRows",
    "DatasetOptions",
    "MCVParams",
    "PreprocessParams",
    "Thinning",
    "open_counts",
    "preprocess",
    "preprocess_file",
    "read_counts",
    "stratified_split",
    "validate_counts",
]
