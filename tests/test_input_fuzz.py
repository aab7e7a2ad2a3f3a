"""Property-based tests (Hypothesis) of the input layer: ``scae.data.preprocess_file``.

What is fuzzed: small ``.h5ad`` files of the kinds people really have, written to disk and
preprocessed as the workflow's preprocess job does.

* counts: negative-binomial or Poisson, gene-specific means, some genes never expressed
  (rarely all but one or two), empty droplets, sometimes a few mitochondrial genes
  ("MT-…"/"mt-…") and dying cells rich in them; 20-150 cells × 15-60 genes;
* storage: CSR, CSC or dense; int32, int64, float32 or float64; counts in ``X``, in ``raw``
  (``X`` then holds log-normalized values of fewer genes) or in ``layers['counts']`` (``X``
  log-normalized); or a ``counts`` place the file does not have;
* values: integers; integers plus float conversion noise (|e| ≤ 1e-6); log-normalized or
  noisy values where counts were expected (fractions); z-scored values (negatives); a NaN;
* cell and gene names: unique, duplicated (also two 10x samples concatenated), numeric
  strings, unicode, some empty;
* labels: categorical, object, string, int or nullable Int64 columns, with several
  classes, one class or a singleton class, and none, some or all values missing; or a
  ``label_key`` that is not a column;
* settings: QC thresholds (sometimes so strict that no cell or no gene is left),
  ``n_top_genes``, ``require_integers``, and the size needs of later stages
  (:class:`scae.sizes.SizeNeeds`, sometimes with training-cell clusters).

Properties: preprocessing either raises :class:`scae.config.InputError` naming the dataset
or returns a valid result — never another exception. Valid: sparse CSR float32 ``X`` =
log1p(``layers['counts']`` / ``obs['library_size']`` · target_sum), no NaN/inf; the
counts are the input's own (noise rounded) for the input's own cells and genes (names made
unique); every cell passes QC; library sizes over the genes in ``min_cells`` training cells;
the HVGs are those scanpy's seurat flavor picks from the training cells alone (ties at the
cut-off kept, as scanpy keeps them, so ``n_vars`` may exceed ``n_top_genes``); three
non-empty splits of the sizes later stages need; ``var['train_mean'/'train_std']`` of the
training cells; labels categorical with missing ones still missing and the same grouping.
Values that are no counts (negative, NaN; fractions when integers are required) are always
refused.

Specific properties pin down, each failing if its behaviour is reverted: missing labels
(warned about with their count, kept missing; all missing is as no labels, unstratified);
too few cells for the later stages (an InputError about training cells when the training
split has ≤ latent_dim cells, success at latent_dim + 1; fewer than 4 test cells refused,
exactly 4 accepted); float counts with conversion noise (rounded, with a warning, to exactly
the clean result; values further from integers than ``scae.data.COUNT_TOLERANCE`` an
InputError reporting their median distance). And test cells never shape the gene filter,
the HVGs or the training moments. The last tests are regressions for bugs this fuzzing found.

Only writable AnnData is built: anndata cannot write an object column mixing strings and
numbers (labels ``["a", 1]``) or holding no string at all (all ``None``: written here as a
float column of NaN), and turns a non-string index into strings, so names are always
strings and a label column is one type plus missing values.

Every test runs with ``derandomize=True`` and no example database, so CI tests the same
examples on every run and never flakes on a new one; ``SCAE_FUZZ_SCALE=20`` runs 20 times
as many examples from fresh seeds, to hunt for bugs locally. Shrinking is off: the matrices
come from a drawn seed, so it makes slow progress (minutes) for little gain; a failing
example is printed as generated and reproduces on every run.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context, event, note

import scae.data
from scae.config import CLUSTER_KEY, InputError
from scae.data.params import DatasetOptions, PreprocessParams
from scae.data.preprocess import preprocess_file
from scae.data.split import stratified_split
from scae.sizes import SizeNeeds

DATASET = "fuzz"
LABEL = "cell_type"
TARGET_SUM = 1e4
#: Conversion noise on integer counts that must be rounded away (float32/float64 exports).
TINY_NOISE = 1e-6


#: SCAE_FUZZ_SCALE=k runs k times the examples from fresh random seeds (a local bug hunt);
#: unset, as in CI, every run tests the same examples.
SCALE = int(os.environ.get("SCAE_FUZZ_SCALE", "0"))


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples * max(SCALE, 1),
        deadline=None,
        derandomize=not SCALE,  # the same examples on every CI run
        database=None,
        # no shrinking: the matrices come from a drawn seed (see the module docstring)
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
        ],
    )


# --------------------------------------------------------------------------- generators

VALUE_KINDS = ("integer", "tiny_noise", "fractional", "large_noise", "negative", "nan")
#: Value kinds that are never counts: always an InputError.
NOT_COUNTS = ("negative", "nan")
#: Value kinds with entries far from integers: an InputError when integers are required.
FRACTIONAL = ("fractional", "large_noise")


@dataclass(frozen=True, repr=False)
class Case:
    """One input file: clean integer counts, their names and labels, and how they are stored."""

    counts: np.ndarray  # cells × genes, int64: the clean counts
    cell_names: tuple[str, ...]
    gene_names: tuple[str, ...]
    mito_genes: int  # how many genes carry a mitochondrial prefix
    labels: object = None  # the obs[LABEL] column as written (array-like), or None
    fmt: str = "csr"  # csr, csc or dense
    dtype: str = "int64"
    placement: str = "X"  # X, raw or layer
    values: str = "integer"  # one of VALUE_KINDS: what the stored counts hold
    seed: int = 0  # for the noise of `values`

    @property
    def counts_key(self) -> str:
        return {"X": "X", "raw": "raw", "layer": "counts"}[self.placement]

    def __repr__(self) -> str:  # failing examples print this, not every name and count
        return f"<Case: {self.describe()}>"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis' printer
        printer.text(repr(self))

    def describe(self) -> str:
        n_missing = None if self.labels is None else int(pd.isna(pd.Series(self.labels)).sum())
        return (
            f"{self.counts.shape[0]} cells × {self.counts.shape[1]} genes, {self.fmt} "
            f"{self.dtype} in {self.placement}, values {self.values}, "
            f"{self.mito_genes} mito genes, labels "
            f"{None if self.labels is None else pd.Series(self.labels).dtype} "
            f"({n_missing} missing), cells {list(self.cell_names[:4])}…, genes "
            f"{list(self.gene_names[:4])}…"
        )


def log_normalized(values: np.ndarray) -> np.ndarray:
    totals = values.sum(axis=1, keepdims=True)
    scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals, dtype=float), where=totals > 0)
    return np.log1p(np.clip(values, 0, None) * scale)


def stored_values(case: Case) -> np.ndarray:
    """The matrix the file stores where the counts are expected (float64 or int64)."""
    rng = np.random.default_rng(case.seed)
    counts = case.counts
    if case.values == "integer":
        return counts.copy()
    if case.values == "tiny_noise":  # on stored entries only: zeros stay exact
        noise = rng.uniform(TINY_NOISE / 10, TINY_NOISE, counts.shape)
        return counts + np.where(counts > 0, noise * rng.choice([-1, 1], counts.shape), 0)
    if case.values == "large_noise":  # some stored entries moved well past the tolerance
        low = max(10 * scae.data.COUNT_TOLERANCE, 0.01)
        hit = (counts > 0) & (rng.random(counts.shape) < 0.3)
        hit.flat[np.flatnonzero(counts > 0)[:1]] = True  # at least one
        noise = rng.uniform(low, 0.45, counts.shape) * rng.choice([-1, 1], counts.shape)
        return counts + np.where(hit, noise, 0)
    if case.values == "fractional":  # X already log-normalized
        return log_normalized(counts)
    if case.values == "negative":  # X already z-scored (sc.pp.scale)
        x = log_normalized(counts)
        x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1)
        if not (x < 0).any():
            x.flat[0] = -1.0
        return x
    assert case.values == "nan"
    x = counts.astype(float)
    x.flat[rng.integers(x.size)] = np.nan
    return x


def as_format(values: np.ndarray, fmt: str, dtype: str):
    values = np.asarray(values).astype(dtype)
    if fmt == "dense":
        return values
    return sp.csr_matrix(values) if fmt == "csr" else sp.csc_matrix(values)


def write(case: Case, path: Path, values: np.ndarray | None = None) -> Path:
    """Write ``case`` (with ``values`` stored as its counts, default :func:`stored_values`)."""
    values = stored_values(case) if values is None else values
    obs = pd.DataFrame(index=pd.Index(list(case.cell_names), dtype=object))
    if case.labels is not None:
        obs[LABEL] = case.labels
    var = pd.DataFrame(index=pd.Index(list(case.gene_names), dtype=object))
    counts = as_format(values, case.fmt, case.dtype)
    normalized = as_format(
        np.nan_to_num(log_normalized(np.nan_to_num(values))), case.fmt, "float32"
    )
    with warnings.catch_warnings():  # duplicate names, implicit conversions
        warnings.simplefilter("ignore")
        if case.placement == "X":
            adata = ad.AnnData(X=counts, obs=obs, var=var)
        elif case.placement == "layer":
            adata = ad.AnnData(X=normalized, obs=obs, var=var, layers={"counts": counts})
        else:  # raw: all genes' counts; X: normalized values of the first genes only
            n_x = max(1, case.counts.shape[1] * 2 // 3)
            adata = ad.AnnData(X=normalized[:, :n_x], obs=obs, var=var.iloc[:n_x])
            adata.raw = ad.AnnData(X=counts, obs=obs, var=var)
        adata.write_h5ad(path)
    return path


def barcodes(n: int, offset: int = 0) -> list[str]:
    """10x-like distinct barcodes AAAAAAAAAA-1, AAAAAAAAAC-1, …"""
    return [
        "".join("ACGT"[(i >> (2 * k)) & 3] for k in range(9, -1, -1)) + "-1"
        for i in range(offset, offset + n)
    ]


def names(style: str, n: int, rng: np.random.Generator, stem: str) -> list[str]:
    if style == "barcode":
        return barcodes(n, offset=int(rng.integers(0, 1000)))
    if style == "symbol":
        return [f"{stem}{i}" for i in range(n)]
    if style == "numeric":  # sometimes with repeats: "0", "2", "2", "4", …
        shift = rng.integers(0, 3, n) if rng.random() < 0.3 else np.zeros(n, dtype=int)
        return [str(i + int(k)) for i, k in zip(range(n), shift)]
    if style == "unicode":
        return [f"{stem}-é{i}-β细胞" for i in range(n)]
    if style == "concatenated":  # two 10x samples concatenated without a key
        half = barcodes((n + 1) // 2)
        return (half + half)[:n]
    out = [f"{stem}{i}" for i in range(n)]
    if style == "duplicated":
        for i in rng.choice(np.arange(1, n), max(1, n // 10), replace=False):
            out[i] = out[int(rng.integers(0, i))]
    elif style == "empty":
        for i in rng.choice(n, max(1, n // 10), replace=False):
            out[i] = ""
    return out


UNIQUE_CELL_STYLES = ("barcode", "symbol", "unicode")
CELL_STYLES = (*UNIQUE_CELL_STYLES, "numeric", "concatenated", "duplicated", "empty")
UNIQUE_GENE_STYLES = ("symbol", "unicode")
GENE_STYLES = (*UNIQUE_GENE_STYLES, "numeric", "duplicated", "empty")
LABEL_DTYPES = ("categorical", "object", "string", "int", "Int64")


@st.composite
def count_cases(
    draw,
    n_cells=(20, 150),
    n_genes=(15, 60),
    cell_styles=CELL_STYLES,
    gene_styles=GENE_STYLES,
    expressed=False,
    mito=True,
    degenerate=False,
) -> Case:
    """Clean integer counts with names, mitochondrial genes and no labels.

    ``expressed``: every gene is expressed at a mean of ≥ 2 and gene 0 in every cell, so
    that lenient QC keeps every cell (and every gene). ``degenerate``: sometimes only one or
    two genes are ever expressed."""
    n, g = draw(st.integers(*n_cells)), draw(st.integers(*n_genes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if expressed:
        means = 2 + 8 * rng.random(g)
    else:
        means = draw(st.sampled_from([0.2, 1.0, 4.0])) * rng.lognormal(0, 1, g)
        silent = draw(st.integers(0, g // 4))  # genes never expressed
        if degenerate and draw(st.integers(0, 9)) == 9:  # all but one or two
            silent = g - draw(st.integers(1, 2))
        means[rng.choice(g, silent, replace=False)] = 0
    mu = rng.lognormal(0, 0.5, n)[:, None] * means[None, :]
    theta = draw(st.sampled_from([0.5, 2.0, 10.0, None]))  # None: Poisson
    counts = (
        rng.poisson(mu) if theta is None else rng.negative_binomial(theta, theta / (theta + mu))
    )
    counts = counts.astype(np.int64)
    n_mito = draw(st.integers(0, 3)) if mito else 0
    mito_genes = rng.choice(np.arange(1, g), n_mito, replace=False)
    if expressed:
        counts[:, 0] = np.maximum(counts[:, 0], 1)
    else:
        if n_mito:  # dying cells: many mitochondrial counts
            dying = rng.random(n) < draw(st.sampled_from([0.0, 0.1, 0.3]))
            counts[np.ix_(dying, mito_genes)] += rng.poisson(20, (int(dying.sum()), n_mito))
        counts[rng.random(n) < draw(st.sampled_from([0.0, 0.05]))] = 0  # empty droplets
    genes = names(draw(st.sampled_from(gene_styles)), g, rng, "GENE")
    prefix = draw(st.sampled_from(["MT-", "mt-"]))
    for i in mito_genes:
        genes[i] = prefix + genes[i]
    cells = names(draw(st.sampled_from(cell_styles)), n, rng, "cell")
    return Case(counts=counts, cell_names=tuple(cells), gene_names=tuple(genes), mito_genes=n_mito)


@st.composite
def label_columns(draw, n: int, missing=("none", "some", "all"), dtypes=LABEL_DTYPES):
    """An obs column of ``n`` labels: (column, missing mask)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    structure = draw(st.sampled_from(["several", "one", "singleton"]))
    k = 1 if structure == "one" else draw(st.integers(2, 5))
    codes = rng.choice(k, n, p=rng.dirichlet(np.ones(k)))
    if structure == "singleton":
        codes[rng.integers(n)] = k
    how = draw(st.sampled_from(missing))
    absent = np.zeros(n, dtype=bool)
    if how == "all":
        absent[:] = True
    elif how == "some":
        absent = rng.random(n) < draw(st.sampled_from([0.05, 0.3, 0.7]))
        chosen = rng.permutation(n)
        absent[chosen[0]], absent[chosen[1]] = True, False  # some, but not all
    dtype = draw(st.sampled_from(dtypes))
    if dtype == "categorical":
        names_ = [f"type {c}" for c in range(codes.max() + 1)]
        column = pd.Categorical.from_codes(np.where(absent, -1, codes), categories=names_)
    elif dtype == "object" and absent.all():  # anndata cannot write an object column
        column = np.full(n, np.nan)  # holding no string: a float column of NaN instead
    elif dtype == "object":
        column = np.array([f"T{c}" for c in codes], dtype=object)
        column[absent] = draw(st.sampled_from([None, np.nan]))
    elif dtype == "string":
        column = pd.array([None if a else f"t{c}" for c, a in zip(codes, absent)], dtype="string")
    elif dtype == "Int64":
        column = pd.array([None if a else int(c) for c, a in zip(codes, absent)], dtype="Int64")
    else:  # int; missing values make it float with NaN, as pandas does
        column = np.where(absent, np.nan, codes) if absent.any() else codes.astype(np.int64)
    return column, absent


@st.composite
def storage(draw, case: Case, values=VALUE_KINDS) -> Case:
    """``case`` stored in a drawn format, dtype and place, with drawn values."""
    kind = draw(st.sampled_from(values))
    if "integer" in values and draw(st.booleans()):  # counts as they should be, more often
        kind = "integer"
    floats = ["float32", "float64"]
    dtype = draw(st.sampled_from(["int32", "int64", *floats] if kind == "integer" else floats))
    return replace(
        case,
        fmt=draw(st.sampled_from(["csr", "csc", "dense"])),
        dtype=dtype,
        placement=draw(st.sampled_from(["X", "raw", "layer"])),
        values=kind,
        seed=draw(st.integers(0, 2**16)),
    )


@st.composite
def full_cases(draw, **kwargs) -> Case:
    """A :func:`count_cases` with a drawn label column (or none) and storage."""
    case = draw(count_cases(**kwargs))
    if draw(st.booleans()):
        column, _ = draw(label_columns(len(case.cell_names)))
        case = replace(case, labels=column)
    return draw(storage(case))


def rarely(common: st.SearchStrategy, extreme: object, when: bool = True) -> st.SearchStrategy:
    """``common``, or one time in ten (if ``when``) ``extreme``."""
    if not when:
        return common
    return st.integers(0, 9).flatmap(lambda i: st.just(extreme) if i == 9 else common)


def qc_params(extremes: bool = True) -> st.SearchStrategy[PreprocessParams]:
    """QC settings; ``extremes``: sometimes so strict that QC removes every cell
    (``min_genes``, ``max_pct_mito``) or the gene filter every gene (``min_cells``)."""
    return st.builds(
        PreprocessParams,
        min_genes=rarely(st.integers(0, 12), 1000, extremes),
        min_cells=rarely(st.integers(0, 8), 1000, extremes),
        max_pct_mito=rarely(st.sampled_from([5.0, 10.0, 20.0, 100.0]), 0.0, extremes),
        target_sum=st.just(TARGET_SUM),
        n_top_genes=st.integers(5, 80),
        test_fraction=st.just(0.2),
        val_fraction=st.just(0.1),
        split_seed=st.integers(0, 3),
    )


#: What later stages need; with ``clusters`` (cosine_embedding's cluster negatives) the
#: preprocessing also builds the training-cell Leiden clusters.
size_needs = st.one_of(
    st.none(),
    st.builds(SizeNeeds, latent_dim=st.integers(1, 24), clusters=rarely(st.just(False), True)),
)


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    result: ad.AnnData | None
    error: InputError | None
    warnings: list[str]


def tell(text: str, *, kind: str = "note") -> None:
    """Hypothesis' note/event, which only work inside a Hypothesis test."""
    if currently_in_test_context():
        (note if kind == "note" else event)(text)


def run(
    case: Case,
    params: PreprocessParams,
    *,
    values: np.ndarray | None = None,
    counts: str | None = None,
    label_key: str | None = LABEL,
    mito_prefix: str | None = "MT-",
    require_integers: bool = True,
    needs: SizeNeeds | None = None,
) -> Outcome:
    """Write ``case`` to a fresh file and preprocess it (the counts read from ``counts``,
    default where ``case`` put them; clusters built when ``needs`` asks for them). An
    InputError must name the dataset; any other error is a bug, reported as one."""
    tell(case.describe())
    with tempfile.TemporaryDirectory() as tmp:
        path = write(case, Path(tmp) / "input.h5ad", values)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                options = DatasetOptions(
                    DATASET,
                    label_key,
                    mito_prefix,
                    require_integers=require_integers,
                    needs=needs,
                    clusters=needs is not None and needs.clusters,
                )
                result = preprocess_file(path, params, options, counts=counts or case.counts_key)
                error = None
            except InputError as err:
                result, error = None, err
            except Exception as err:  # a bug in the input layer
                raise AssertionError(
                    f"preprocessing raised {type(err).__name__}: {err}; it must succeed or "
                    f"raise an InputError naming dataset {DATASET!r}"
                ) from err
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    tell(
        "success"
        if error is None
        else "InputError: "
        + next(
            (
                why
                for why in ("NaN", "not raw counts", "split after QC", "later stages")
                if why in str(error)
            ),
            "other",
        ),
        kind="event",
    )
    if error is not None:
        tell(f"InputError: {error}")
        assert f"'{DATASET}'" in str(error), f"the InputError does not name the dataset: {error}"
    return Outcome(result, error, messages)


def warned(outcome: Outcome, text: str) -> list[str]:
    return [m for m in outcome.warnings if text in m]


def input_rows(case: Case, out: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """The input rows and columns of the result's cells and genes (after make-unique)."""
    cells = ad.utils.make_index_unique(pd.Index(list(case.cell_names)))
    genes = ad.utils.make_index_unique(pd.Index(list(case.gene_names)))
    rows, cols = cells.get_indexer(out.obs_names), genes.get_indexer(out.var_names)
    assert (rows >= 0).all(), f"cells not in the input: {list(out.obs_names[rows < 0][:5])}"
    assert (cols >= 0).all(), f"genes not in the input: {list(out.var_names[cols < 0][:5])}"
    return rows, cols


def check_hvgs(chosen: np.ndarray, train_counts: np.ndarray, n_top: int) -> None:
    """``chosen`` (a mask of genes) are the ``n_top`` genes of highest normalized dispersion
    that scanpy's seurat flavor computes from the raw training counts, with every gene tied
    at the cut-off (so sometimes more than ``n_top``, as scanpy keeps them too). Ties are
    common in small data (a bin of one gene has z = 1, of two genes z = ±1/√2), and tied
    values may differ in their last bits, so a tie is anything within 1e-5 of the cut-off.

    Not checked when a bin's genes all share one dispersion (genes seen in one training cell
    with the same count): scanpy's z is 0/0 = NaN there, scae's the rounding noise of the
    bin's spread, so either may pick them (a known difference)."""
    import scanpy as sc

    train = ad.AnnData(X=sp.csr_matrix(train_counts.astype(np.float32)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.normalize_total(train, target_sum=TARGET_SUM)
        sc.pp.log1p(train)
        stats = sc.pp.highly_variable_genes(
            train, n_top_genes=n_top, flavor="seurat", inplace=False
        )
    z = stats["dispersions_norm"].to_numpy(dtype=float)
    if (np.isnan(z) & np.isfinite(stats["dispersions"].to_numpy(dtype=float))).any():
        tell("HVGs not compared with scanpy: a bin of equal dispersions", kind="event")
        return
    z = np.nan_to_num(z, nan=-np.inf)
    ranked = np.sort(z[np.isfinite(z)])[::-1]
    assert len(ranked), "no gene varies over the training cells, yet HVGs were chosen"
    cutoff = ranked[min(n_top, len(ranked)) - 1]
    tie = 1e-5 * max(1.0, abs(cutoff))
    assert (z[chosen] >= cutoff - tie).all(), "an HVG below scanpy's cut-off"
    assert (z[~chosen] <= cutoff + tie).all(), "a gene above scanpy's cut-off left out"
    assert min(n_top, len(ranked)) <= chosen.sum() <= (z >= cutoff - tie).sum()


def check_result(
    case: Case,
    out: ad.AnnData,
    outcome: Outcome,
    params: PreprocessParams,
    *,
    label_key: str | None,
    mito_prefix: str | None,
    require_integers: bool,
    needs: SizeNeeds | None,
) -> None:
    """Every property of a successful preprocessing (module docstring)."""
    assert out.n_obs > 0 and out.n_vars > 0
    assert out.obs_names.is_unique and out.var_names.is_unique
    X, counts = out.X, out.layers["counts"]
    assert sp.issparse(X) and X.format == "csr" and X.dtype == np.float32
    assert sp.issparse(counts) and counts.format == "csr" and counts.shape == X.shape
    assert np.isfinite(X.data).all() and np.isfinite(counts.data).all()
    assert (counts.data >= 0).all()
    if require_integers:
        assert (counts.data == np.round(counts.data)).all(), "counts are not integers"

    # the input's own counts (as read: float32, noise rounded), of its own cells and genes
    rows, cols = input_rows(case, out)
    values = stored_values(case).astype(case.dtype).astype(np.float32).astype(np.float64)
    if case.values == "tiny_noise":
        values = np.round(values)
    values = values[rows]  # every gene, the result's cells
    np.testing.assert_array_equal(counts.toarray(), values[:, cols])

    # X = log1p(counts / library size · target_sum)
    library = out.obs["library_size"].to_numpy()
    assert (library > 0).all()
    np.testing.assert_allclose(
        X.toarray(),
        np.log1p(counts.toarray() / library[:, None] * TARGET_SUM),
        rtol=1e-5,
        atol=1e-6,
    )

    # three non-empty splits of the sizes later stages need
    split = out.obs["split"]
    assert isinstance(split.dtype, pd.CategoricalDtype)
    assert set(split.cat.categories) <= {"train", "val", "test"}
    sizes = split.value_counts()
    assert all(sizes.get(s, 0) > 0 for s in ("train", "val", "test")), sizes.to_dict()
    if needs is not None:
        least = needs.minimums()
        assert sizes["train"] >= max(least["train"], needs.latent_dim + 1), sizes.to_dict()
        assert sizes["val"] >= max(least["val"], 1) and sizes["test"] >= max(least["test"], 4)
        assert out.n_vars >= 10

    # QC: every cell passes it
    assert ((values != 0).sum(axis=1) >= params.min_genes).all()
    if mito_prefix is not None:
        genes = ad.utils.make_index_unique(pd.Index(list(case.gene_names)))
        mito = np.asarray(genes.str.upper().str.startswith(mito_prefix.upper()))
        if mito.any():
            pct = 100 * values[:, mito].sum(axis=1) / values.sum(axis=1)
            assert (pct <= params.max_pct_mito + 1e-3).all()

    # the gene filter (min_cells training cells), library sizes over the genes it keeps, and
    # the HVGs scanpy picks from the training cells alone (all genes tied at the cut-off, so
    # sometimes more than n_top_genes, as scanpy does)
    train = np.asarray(split == "train")
    kept = (values[train] != 0).sum(axis=0) >= params.min_cells
    np.testing.assert_allclose(library, values[:, kept].sum(axis=1), rtol=1e-5)
    chosen = np.isin(np.flatnonzero(kept), cols)
    assert chosen.sum() == len(cols), "an HVG the gene filter removes"
    assert (np.diff(cols) > 0).all(), "HVGs not in the input's gene order"
    check_hvgs(chosen, values[train][:, kept], min(params.n_top_genes, int(kept.sum())))
    if out.n_vars > params.n_top_genes:
        tell("more HVGs than n_top_genes (ties)", kind="event")

    # training-cell moments of the log-normalized values
    dense = X.toarray().astype(np.float64)
    np.testing.assert_allclose(
        out.var["train_mean"], dense[train].mean(axis=0), rtol=1e-4, atol=1e-5
    )
    if train.sum() > 1:
        np.testing.assert_allclose(
            out.var["train_std"], dense[train].std(axis=0, ddof=1), rtol=1e-3, atol=1e-5
        )

    if needs is not None and needs.clusters:  # every cell in a training-cell cluster
        assert not out.obs[CLUSTER_KEY].isna().any()

    # labels: categorical, missing stays missing, the same grouping
    scae_uns = out.uns["scae"]
    assert scae_uns["dataset"] == DATASET
    if label_key is None or case.labels is None:
        assert scae_uns["label_key"] == ""
        return
    given_labels = pd.Series(case.labels).iloc[rows].reset_index(drop=True)
    missing = given_labels.isna().to_numpy()
    if missing.all():
        assert scae_uns["label_key"] == "", "all labels missing must be as no labels"
        assert warned(outcome, "has no labels"), outcome.warnings
        return
    assert scae_uns["label_key"] == label_key
    labels = out.obs[label_key]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert not {"nan", "NaN", "None", "<NA>"} & {str(c) for c in labels.cat.categories}
    np.testing.assert_array_equal(labels.isna().to_numpy(), missing)
    if missing.any():
        assert warned(outcome, "have no label"), outcome.warnings
    pairs = pd.DataFrame(
        {
            "given": given_labels[~missing].astype(str).to_numpy(),
            "out": labels[~missing].astype(str).to_numpy(),
        }
    )
    assert (pairs.groupby("given")["out"].nunique() == 1).all()
    assert (pairs.groupby("out")["given"].nunique() == 1).all()


# --------------------------------------------------------------------------- properties


@fuzz_settings(150)
@given(
    case=full_cases(degenerate=True),
    params=qc_params(),
    needs=size_needs,
    require_integers=st.booleans(),
    label_key=st.sampled_from([LABEL, None]),
    mito_prefix=st.sampled_from(["MT-", None]),
)
def test_preprocessing_succeeds_validly_or_raises_input_error(
    case, params, needs, require_integers, label_key, mito_prefix
):
    outcome = run(
        case,
        params,
        label_key=label_key,
        mito_prefix=mito_prefix,
        require_integers=require_integers,
        needs=needs,
    )
    if case.values in NOT_COUNTS or (require_integers and case.values in FRACTIONAL):
        assert outcome.error is not None, f"{case.values} values were taken as counts"
    if params.min_genes > case.counts.shape[1]:
        assert outcome.error is not None, "QC removed every cell, yet no InputError"
    if outcome.error is None:
        check_result(
            case,
            outcome.result,
            outcome,
            params,
            label_key=label_key,
            mito_prefix=mito_prefix,
            require_integers=require_integers,
            needs=needs,
        )


LENIENT = PreprocessParams(
    min_genes=1, min_cells=1, max_pct_mito=100.0, target_sum=TARGET_SUM, n_top_genes=1000
)


@st.composite
def labelled_cases(draw, missing: str) -> tuple[Case, np.ndarray]:
    """Cells that all pass lenient QC, with labels ``missing`` ("some" or "all")."""
    case = draw(count_cases(cell_styles=UNIQUE_CELL_STYLES, expressed=True, mito=False))
    column, absent = draw(label_columns(len(case.cell_names), missing=(missing,)))
    case = draw(storage(replace(case, labels=column), values=("integer",)))
    return case, absent


@fuzz_settings(25)
@given(labelled=labelled_cases("some"))
def test_missing_labels_are_warned_about_and_stay_missing(labelled):
    case, absent = labelled
    outcome = run(case, LENIENT, mito_prefix=None)
    assert outcome.error is None, outcome.error
    out = outcome.result
    n_missing = int(absent.sum())
    messages = warned(outcome, "have no label")
    assert messages, f"no 'have no label' warning: {outcome.warnings}"
    assert any(re.search(rf"\b{n_missing}\b", m) for m in messages), (n_missing, messages)
    assert out.n_obs == len(absent)  # lenient QC keeps every cell
    rows, _ = input_rows(case, out)
    labels = out.obs[LABEL]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    np.testing.assert_array_equal(labels.isna().to_numpy(), absent[rows])
    assert not {"nan", "NaN", "None", "<NA>"} & {str(c) for c in labels.cat.categories}
    check_result(
        case,
        out,
        outcome,
        LENIENT,
        label_key=LABEL,
        mito_prefix=None,
        require_integers=True,
        needs=None,
    )


@fuzz_settings(15)
@given(labelled=labelled_cases("all"))
def test_all_labels_missing_is_as_no_labels(labelled):
    case, _ = labelled
    outcome = run(case, LENIENT, mito_prefix=None)
    assert outcome.error is None, outcome.error
    assert warned(outcome, "has no labels"), outcome.warnings
    assert outcome.result.uns["scae"]["label_key"] == ""
    unlabelled = run(case, LENIENT, mito_prefix=None, label_key=None)
    assert unlabelled.error is None, unlabelled.error
    unlabelled = unlabelled.result
    assert list(outcome.result.obs_names) == list(unlabelled.obs_names)
    assert (outcome.result.obs["split"] == unlabelled.obs["split"]).all(), (
        "the split is stratified by labels that are all missing"
    )


def unstratified_train_size(n: int, params: PreprocessParams) -> int:
    """Training cells of ``n`` cells split without labels (scae.data.stratified_split)."""
    return n - round(n * params.test_fraction) - round(n * params.val_fraction)


@fuzz_settings(25)
@given(
    case=count_cases(n_cells=(20, 60), cell_styles=UNIQUE_CELL_STYLES, expressed=True, mito=False),
    above=st.integers(0, 8),
    data=st.data(),
)
def test_too_few_training_cells_for_the_latent_dim_is_an_input_error(case, above, data):
    case = data.draw(storage(case, values=("integer",)))
    n_train = unstratified_train_size(len(case.cell_names), LENIENT)
    # the training split has ≤ latent_dim cells: an InputError about training cells
    tiny = run(
        case, LENIENT, mito_prefix=None, needs=SizeNeeds(latent_dim=n_train + above, clusters=False)
    )
    assert tiny.error is not None, (
        f"{n_train} training cells were accepted for latent_dim {n_train + above}"
    )
    assert "training cells" in str(tiny.error), tiny.error
    # one more training cell than latent dimensions is enough
    needs = SizeNeeds(latent_dim=n_train - 1, clusters=False)
    enough = run(case, LENIENT, mito_prefix=None, needs=needs)
    assert enough.error is None, enough.error
    assert (enough.result.obs["split"] == "train").sum() == n_train
    check_result(
        case,
        enough.result,
        enough,
        LENIENT,
        label_key=LABEL,
        mito_prefix=None,
        require_integers=True,
        needs=needs,
    )


@fuzz_settings(15)
@given(
    case=count_cases(n_cells=(6, 19), cell_styles=UNIQUE_CELL_STYLES, expressed=True, mito=False),
    data=st.data(),
)
def test_fewer_than_four_test_cells_is_an_input_error(case, data):
    """Below 18 cells the unstratified split holds out fewer than 4 test cells (18 and 19
    cells: exactly 4), which the test-cell metrics cannot use."""
    case = data.draw(storage(case, values=("integer",)))
    n = len(case.cell_names)
    needs = SizeNeeds(latent_dim=1, clusters=False)
    outcome = run(case, LENIENT, mito_prefix=None, needs=needs)
    if round(n * LENIENT.test_fraction) < 4:
        assert outcome.error is not None, f"{n} cells: fewer than 4 test cells accepted"
        assert "test cells" in str(outcome.error), outcome.error
    else:
        assert outcome.error is None, outcome.error
        assert (outcome.result.obs["split"] == "test").sum() == 4
        check_result(
            case,
            outcome.result,
            outcome,
            LENIENT,
            label_key=LABEL,
            mito_prefix=None,
            require_integers=True,
            needs=needs,
        )


@fuzz_settings(10)
@given(
    case=count_cases(
        n_cells=(30, 60),
        n_genes=(6, 13),
        cell_styles=UNIQUE_CELL_STYLES,
        expressed=True,
        mito=False,
    ),
    data=st.data(),
)
def test_fewer_than_ten_genes_is_an_input_error(case, data):
    """Every gene is kept and chosen here (each varies, n_top_genes is above them all), so
    fewer than 10 genes, too few for the per-gene deciles, must be refused, and 10 accepted."""
    case = data.draw(storage(case, values=("integer",)))
    needs = SizeNeeds(latent_dim=1, clusters=False)
    outcome = run(case, LENIENT, mito_prefix=None, needs=needs)
    if len(case.gene_names) < 10:
        assert outcome.error is not None, f"{len(case.gene_names)} genes accepted"
        assert "genes" in str(outcome.error), outcome.error
    else:
        assert outcome.error is None, outcome.error
        assert outcome.result.n_vars == len(case.gene_names)


@fuzz_settings(40)
@given(case=count_cases(), params=qc_params(extremes=False), data=st.data())
def test_float_counts_with_conversion_noise_are_rounded_to_the_clean_result(case, params, data):
    clean = data.draw(storage(case, values=("integer",)))
    noisy = replace(
        clean, dtype=data.draw(st.sampled_from(["float32", "float64"])), values="tiny_noise"
    )
    stored = stored_values(noisy).astype(noisy.dtype)
    if not (stored != case.counts).any():  # float32 can swallow noise on large counts
        return
    first = run(clean, params)
    second = run(noisy, params)
    assert warned(second, "rounded"), f"no warning that values were rounded: {second.warnings}"
    if first.error is not None:
        assert second.error is not None, "noisy counts passed where the clean ones failed"
        return
    assert second.error is None, f"conversion noise ≤ {TINY_NOISE} refused: {second.error}"
    a, b = first.result, second.result
    assert list(a.obs_names) == list(b.obs_names) and list(a.var_names) == list(b.var_names)
    assert (a.obs["split"] == b.obs["split"]).all()
    difference = a.layers["counts"] != b.layers["counts"]
    assert difference.nnz == 0, "rounded counts differ from the clean counts"
    np.testing.assert_array_equal(a.layers["counts"].toarray(), b.layers["counts"].toarray())


@fuzz_settings(25)
@given(case=count_cases(), params=qc_params(extremes=False), data=st.data())
def test_counts_far_from_integers_are_an_input_error_that_says_how_far(case, params, data):
    if not (case.counts > 0).any():
        return
    noisy = data.draw(storage(case, values=("large_noise",)))
    outcome = run(noisy, params, require_integers=True)
    assert outcome.error is not None, "non-integer counts were taken as integers"
    message = str(outcome.error)
    assert "non-integer" in message and "median" in message, message
    # without require_integers they are only warned about
    relaxed = run(noisy, params, require_integers=False)
    if relaxed.error is not None:
        assert "non-integer" not in str(relaxed.error), relaxed.error


@fuzz_settings(30)
@given(
    case=count_cases(n_cells=(40, 150), cell_styles=UNIQUE_CELL_STYLES),
    data=st.data(),
    params=st.builds(
        PreprocessParams,
        min_genes=st.integers(0, 4),
        min_cells=st.integers(0, 3),
        max_pct_mito=st.sampled_from([20.0, 100.0]),
        target_sum=st.just(TARGET_SUM),
        n_top_genes=st.integers(5, 20),
    ),
    require_integers=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_test_cells_do_not_shape_the_gene_selection(case, data, params, require_integers, seed):
    """Scaling every test cell's non-mitochondrial genes by gene-specific factors of 1-10
    changes their normalized profiles (a plain multiple would not) but not their QC outcome:
    the same genes are detected and the mito % only falls. So the split stays, and the gene
    filter, the HVGs and the training moments must not move."""
    if data.draw(st.booleans()):
        column, _ = data.draw(label_columns(len(case.cell_names)))
        case = replace(case, labels=column)
    case = data.draw(storage(case, values=("integer", "tiny_noise", "fractional")))
    first = run(case, params, require_integers=require_integers)
    if first.error is not None:
        return
    a = first.result
    rows, _ = input_rows(case, a)
    mito = np.char.startswith(np.char.upper(np.array(case.gene_names, dtype=str)), "MT-")
    factors = np.where(
        mito, 1, np.random.default_rng(seed).choice([1, 2, 5, 10], len(case.gene_names))
    )
    values = stored_values(case)
    test_rows = rows[np.asarray(a.obs["split"] == "test")]
    values[test_rows] = values[test_rows] * factors
    second = run(case, params, values=values, require_integers=require_integers)
    assert second.error is None, second.error
    b = second.result
    assert list(b.obs_names) == list(a.obs_names)
    assert (b.obs["split"] == a.obs["split"]).all()
    assert list(b.var_names) == list(a.var_names), "test cells changed the HVGs"
    np.testing.assert_array_equal(b.var["train_mean"], a.var["train_mean"])
    np.testing.assert_array_equal(b.var["train_std"], a.var["train_std"])


def test_generators_build_every_corner():
    """The strategies reach the corners the module docstring lists (a cheap guard against
    a generator silently narrowing)."""
    case = Case(
        counts=np.arange(12).reshape(3, 4),
        cell_names=("a", "a", ""),
        gene_names=("MT-1", "2", "é", "2"),
        mito_genes=1,
    )
    for kind in VALUE_KINDS:
        values = stored_values(replace(case, values=kind, dtype="float64"))
        assert values.shape == case.counts.shape
    with tempfile.TemporaryDirectory() as tmp:
        for placement in ("X", "raw", "layer"):
            for fmt in ("csr", "csc", "dense"):
                path = write(
                    replace(case, placement=placement, fmt=fmt, dtype="int32"),
                    Path(tmp) / f"{placement}-{fmt}.h5ad",
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    back = ad.read_h5ad(path)
                assert back.n_obs == 3


@fuzz_settings(10)
@given(
    case=count_cases(n_cells=(20, 40), n_genes=(15, 20)),
    placement=st.sampled_from(["X", "layer"]),
    counts=st.sampled_from(["raw", "spliced"]),
)
def test_counts_where_the_file_has_none_is_an_input_error(case, placement, counts):
    outcome = run(replace(case, placement=placement), LENIENT, counts=counts)
    assert outcome.error is not None, f"counts={counts!r} read from a file without it"
    assert counts in str(outcome.error), outcome.error


# ------------------------------------------- regressions: bugs these properties found


def poisson_case(n_cells: int, n_genes: int, seed: int, mean: float = 3.0) -> Case:
    counts = np.random.default_rng(seed).poisson(mean, (n_cells, n_genes))
    return Case(
        counts=counts,
        cell_names=tuple(barcodes(n_cells)),
        gene_names=tuple(f"GENE{i}" for i in range(n_genes)),
        mito_genes=0,
    )


@pytest.mark.parametrize("needs", [None, SizeNeeds(latent_dim=4, clusters=False)])
def test_a_gene_filter_that_removes_every_gene_is_an_input_error(needs):
    """Found by the fuzzing: min_cells above the training cells left no gene, and
    seurat_hvg's pd.cut of no gene raised ValueError('Cannot cut empty array')."""
    params = replace(LENIENT, min_cells=1000)
    outcome = run(poisson_case(40, 20, seed=0), params, mito_prefix=None, needs=needs)
    assert outcome.error is not None


@pytest.mark.parametrize("needs", [None, SizeNeeds(latent_dim=4, clusters=False)])
def test_no_gene_varying_over_the_training_cells_is_an_input_error(needs):
    """Found by the fuzzing: with a single gene expressed, every normalized value is the
    target sum, no dispersion is defined, and seurat_hvg indexed an empty ranking
    (IndexError)."""
    case = poisson_case(40, 20, seed=0)
    counts = np.zeros_like(case.counts)
    counts[:, 0] = case.counts[:, 0] + 1
    outcome = run(replace(case, counts=counts), LENIENT, mito_prefix=None, needs=needs)
    assert outcome.error is not None


def test_genes_with_equal_dispersions_leave_hvgs_to_choose():
    """Found by the fuzzing: three identical genes fill a dispersion bin whose spread is 0, so
    their z is ±inf from rounding; seurat_hvg's nan_to_num turned the +inf cut-off's genes
    into a finite number below it, chose no gene at all, and the training moments of zero
    HVGs failed in np.bincount (UFuncTypeError). Exactly one HVG is asked for here."""
    case = poisson_case(30, 12, seed=31)
    counts = case.counts.copy()
    counts[:, 1] = counts[:, 2] = counts[:, 0]
    outcome = run(replace(case, counts=counts), replace(LENIENT, n_top_genes=1), mito_prefix=None)
    if outcome.error is None:
        assert outcome.result.n_vars >= 1


def test_cells_dropped_by_the_gene_filter_leave_no_split_empty():
    """Found by the fuzzing: the split is checked for empty parts before the gene filter,
    whose removed genes can leave cells without counts, dropped afterwards. Without size
    needs (the API's default), validation cells holding counts only in a gene no training
    cell has left a result with no validation cell at all."""
    case = poisson_case(30, 16, seed=0)
    split = stratified_split(
        None, 30, LENIENT.test_fraction, LENIENT.val_fraction, LENIENT.split_seed
    )
    counts = case.counts.copy()
    counts[:, 15] = 0
    counts[split == "val"] = 0
    counts[split == "val", 15] = 5
    outcome = run(replace(case, counts=counts), LENIENT, mito_prefix=None)
    if outcome.error is None:
        sizes = outcome.result.obs["split"].value_counts()
        assert all(sizes.get(s, 0) > 0 for s in ("train", "val", "test")), sizes.to_dict()


# --------------------------------------------------------------------------- layouts

#: Gene and cell name styles: some carry orientation evidence, some none.
GENE_NAME_STYLES = ("symbols", "symbols_with_mito", "ensembl", "mouse_mito", "numeric")
CELL_NAME_STYLES = ("barcodes", "sample_barcodes", "plain", "numeric")
#: Styles that are evidence (scae.orientation): gene IDs or ≥ 3 mitochondrial genes on
#: the gene axis, barcodes on the cell axis.
GENE_EVIDENCE = ("symbols_with_mito", "ensembl", "mouse_mito")
CELL_EVIDENCE = ("barcodes", "sample_barcodes")


def gene_names(style: str, n: int, rng: np.random.Generator) -> list[str]:
    if style == "ensembl":
        return [f"ENSG{i:011d}" for i in rng.choice(10**6, n, replace=False)]
    if style == "numeric":
        return [str(i) for i in range(n)]
    names = [f"GENE{i}" for i in range(n)]
    if style in ("symbols_with_mito", "mouse_mito"):
        prefix = "MT-" if style == "symbols_with_mito" else "mt-"
        names[-3:] = [f"{prefix}ND{i}" for i in (1, 2, 3)]
    return names


def cell_names(style: str, n: int, rng: np.random.Generator) -> list[str]:
    if style in ("barcodes", "sample_barcodes"):
        codes = ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(n)]
        if style == "sample_barcodes":
            return [f"s{i % 2}_{code}" for i, code in enumerate(codes)]
        return codes
    if style == "numeric":
        return [str(1000 + i) for i in range(n)]
    return [f"cell_{i}" for i in range(n)]


@dataclass(frozen=True)
class Layout:
    counts: np.ndarray  # cells × genes, the truth
    cells: list[str]
    genes: list[str]
    labels: list[str] | None
    genes_as_rows: bool  # how the file stores it
    kind: str  # h5ad | csv.gz | tsv
    transpose: str | bool
    gene_style: str
    cell_style: str

    @property
    def evidence(self) -> bool:
        """Whether any name (or the label column) shows which axis holds the cells."""
        has_label = self.labels is not None and self.kind == "h5ad"
        return self.gene_style in GENE_EVIDENCE or self.cell_style in CELL_EVIDENCE or has_label

    def write(self, directory: Path) -> Path:
        path = directory / f"input.{self.kind}"
        cells, genes = pd.Index(self.cells), pd.Index(self.genes)
        if self.kind == "h5ad":
            obs = pd.DataFrame(index=cells)
            if self.labels is not None:
                obs[LABEL] = pd.Categorical(self.labels)
            adata = ad.AnnData(sp.csr_matrix(self.counts), obs=obs, var=pd.DataFrame(index=genes))
            (adata.T if self.genes_as_rows else adata).write_h5ad(path)
        else:
            table = pd.DataFrame(self.counts, index=cells, columns=genes)
            (table.T if self.genes_as_rows else table).to_csv(
                path, sep="," if self.kind == "csv.gz" else "\t"
            )
        return path


@st.composite
def layouts(draw) -> Layout:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_cells, n_genes = draw(st.integers(30, 70)), draw(st.integers(12, 40))
    means = rng.gamma(0.6, 3.0, n_genes)
    counts = rng.poisson(means, (n_cells, n_genes)).astype(np.int64)
    counts[:, 0] += 1  # every cell has a count: QC is not what this tests
    gene_style = draw(st.sampled_from(GENE_NAME_STYLES))
    cell_style = draw(st.sampled_from(CELL_NAME_STYLES))
    n_classes = draw(st.sampled_from([0, 1, 3]))
    labels = None if not n_classes else [f"type {i % n_classes}" for i in range(n_cells)]
    return Layout(
        counts,
        cell_names(cell_style, n_cells, rng),
        gene_names(gene_style, n_genes, rng),
        labels,
        draw(st.booleans()),
        draw(st.sampled_from(["h5ad", "csv.gz", "tsv"])),
        draw(st.sampled_from(["auto", True, False])),
        gene_style,
        cell_style,
    )


@fuzz_settings(60)
@given(layout=layouts())
def test_a_layout_is_read_right_or_refused_never_run_on_the_wrong_matrix(layout):
    """Orientation, name styles and label cardinality: the result holds the true cells × genes
    counts, or preprocessing refuses naming ``transpose``; reading the wrong matrix happens
    only where no name is evidence and the record says so (or the config said so)."""
    tell(
        f"genes {layout.gene_style}, cells {layout.cell_style}, "
        f"{'genes' if layout.genes_as_rows else 'cells'} as rows in {layout.kind}, "
        f"transpose {layout.transpose}, labels {layout.labels and len(set(layout.labels))}"
    )
    label_key = LABEL if layout.labels is not None and layout.kind == "h5ad" else None
    options = DatasetOptions(DATASET, label_key, "MT-")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = preprocess_file(
                layout.write(Path(tmp)), LENIENT, options, transpose=layout.transpose
            )
        except InputError as err:
            assert f"dataset {DATASET!r}" in str(err)
            event("refused")
            # a refusal on orientation names the setting; auto with evidence one way never
            # refuses on orientation
            if "transpose" in str(err):
                assert f"datasets.{DATASET}.transpose" in str(err)
                one_way = layout.evidence and "both" not in str(err)
                assert not (layout.transpose == "auto" and one_way)
            return
    record = result.uns["scae"]["orientation"]
    read_right = (
        result.obs_names.isin(layout.cells).all() and result.var_names.isin(layout.genes).all()
    )
    if not read_right:
        event("read as stored without evidence")
        assert not layout.evidence, record
        assert record["decided_by"] in ("default", "config")
        assert not record["rows_are_cells"] and not record["rows_are_genes"]
        return
    event("read right")
    truth = pd.DataFrame(layout.counts, index=layout.cells, columns=layout.genes)
    got = result.layers["counts"].toarray()
    expected = truth.loc[list(result.obs_names), list(result.var_names)].to_numpy()
    np.testing.assert_array_equal(got, expected)
    if layout.evidence and layout.transpose == "auto":
        assert record["decided_by"] == "evidence"
        assert record["transposed"] == layout.genes_as_rows
