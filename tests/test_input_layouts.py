"""Inputs as biologists have them: orientation, counts found elsewhere, one label class, and
the formats beyond .h5ad (loom, zarr, GEO text tables with a description column, gzipped).

Unit tests pin down the evidence rules (:mod:`scae.orientation`) and the readers; the
workflow tests run the real ``snakemake`` on pbmc3k cells written the odd way and compare
their numbers with the same cells read the ordinary way.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scae.config import InputError, format_of
from scae.data.params import DatasetOptions, PreprocessParams
from scae.data.preprocess import preprocess, preprocess_file
from scae.data.readers import read_table
from scae.evaluation.metrics import LABEL_METRICS, embedding_metrics
from scae.orientation import (
    Evidence,
    StoredNames,
    barcode_evidence,
    decide,
    gene_evidence,
    planned_orientation,
    stored_names,
)

from .conftest import pbmc_subset
from .test_robustness import DATASET, small_config, snakemake, succeeded, write_config

PARAMS = PreprocessParams(n_top_genes=200)
OPTIONS = DatasetOptions(dataset="d", label_key=None)


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    """300 real pbmc3k cells × all 32,738 genes, raw counts."""
    return pbmc_subset(300, seed=1)


def write_genes_by_cells(adata: ad.AnnData, path, sep: str = ",", description: bool = False):
    """Write ``adata``'s counts as a GEO-style table: a row per gene, a column per barcode."""
    table = pd.DataFrame(
        adata.X.T.toarray().astype(np.int64),
        index=adata.var_names.copy(),  # (naming the index below must not rename adata's)
        columns=adata.obs_names,
    )
    if description:
        table.insert(0, "description", [f"gene {name}, a description" for name in table.index])
    table.index.name = "gene"
    table.to_csv(path, sep=sep)
    return path


def same_preprocessing(a: ad.AnnData, b: ad.AnnData) -> None:
    assert list(a.obs_names) == list(b.obs_names)
    assert list(a.var_names) == list(b.var_names)
    assert (a.X != b.X).nnz == 0
    assert (a.layers["counts"] != b.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(a.obs["split"], b.obs["split"])


# --------------------------------------------------------------------------------------------
# the evidence


def test_gene_names_are_told_by_ensembl_ids_or_mitochondrial_genes():
    assert "Ensembl" in gene_evidence([f"ENSG{i:011d}" for i in range(50)])
    assert "Ensembl" in gene_evidence([f"ENSMUSG{i:011d}.2" for i in range(50)])
    symbols = ["CD3E", "LYZ", "MS4A1", "MT-ND1", "MT-CO1", "MT-ATP6"]
    assert "3 names are mitochondrial" in gene_evidence(symbols)
    # mouse, R's make.names, Drosophila: known prefixes as written
    assert gene_evidence(["mt-Co1", "mt-Nd1", "mt-Cytb", "Actb"])
    assert gene_evidence(["MT.ND1", "MT.CO1", "MT.CYB"])
    assert gene_evidence(["mt:CoI", "mt:ND1", "mt:Cyt-b"])
    # two mitochondrial names could be chance; symbols alone prove nothing
    assert gene_evidence(["MT-ND1", "MT-CO1", "CD3E"]) is None
    assert gene_evidence(["CD3E", "LYZ", "GAPDH"]) is None


def test_cell_names_are_told_by_barcodes():
    assert barcode_evidence(["AAACATACAACCAC-1", "AAACATTGAGCTAC-1"])  # 10x v1, 14 bases
    assert barcode_evidence(["s1_AAACCTGAGAAGGCCT-1", "s2:TTTGTCATCTTGTATC"])  # with samples
    assert barcode_evidence(["cell_1", "cell_2", "AAACATACAACCAC-1"]) is None  # a third
    assert barcode_evidence(["ACGTACGTACG"]) is None  # 11 bases: a gene could be named so


def test_the_label_column_is_evidence_on_its_axis():
    names = StoredNames(pd.Index(["a", "b"]), pd.Index(["x", "y"]), ("cell_type",), ())
    assert Evidence.of(names, None, "cell_type").rows_are_cells
    flipped = StoredNames(pd.Index(["x", "y"]), pd.Index(["a", "b"]), (), ("cell_type",))
    assert Evidence.of(flipped, None, "cell_type").rows_are_genes


GENES_AS_ROWS = Evidence(rows_are_genes=("rows: 13 names are mitochondrial genes",))
CELLS_AS_ROWS = Evidence(rows_are_cells=("rows: 300 of 300 names are cell barcodes",))
BOTH = Evidence(CELLS_AS_ROWS.rows_are_cells, GENES_AS_ROWS.rows_are_genes)


@pytest.mark.parametrize(
    ("evidence", "transpose", "transposed", "decided_by"),
    [
        (GENES_AS_ROWS, "auto", True, "evidence"),
        (CELLS_AS_ROWS, "auto", False, "evidence"),
        (Evidence(), "auto", False, "default"),
        (Evidence(), True, True, "config"),
        (Evidence(), False, False, "config"),
        (GENES_AS_ROWS, True, True, "config"),
        (CELLS_AS_ROWS, False, False, "config"),
        (BOTH, True, True, "config"),  # the user settles what the names cannot
    ],
)
def test_decisions(evidence, transpose, transposed, decided_by):
    orientation = decide(evidence, transpose, "f.csv", "d")
    assert (orientation.transposed, orientation.decided_by) == (transposed, decided_by)
    assert orientation.sentence().startswith("Input read as ")


@pytest.mark.parametrize(
    ("evidence", "transpose", "fix"),
    [
        (GENES_AS_ROWS, False, "set datasets.d.transpose: true"),
        (CELLS_AS_ROWS, True, "set datasets.d.transpose: false"),
        (BOTH, "auto", "set datasets.d.transpose: true if the rows are genes"),
    ],
)
def test_contradicted_or_ambiguous_settings_are_refused_with_the_evidence(evidence, transpose, fix):
    with pytest.raises(InputError, match="f.csv: dataset 'd'") as err:
        decide(evidence, transpose, "f.csv", "d")
    assert fix in str(err.value)
    assert "mitochondrial genes" in str(err.value) or "barcodes" in str(err.value)


def test_no_evidence_says_so_in_the_sentence():
    sentence = decide(Evidence(), "auto", "f.csv", "d").sentence()
    assert "no evidence either way" in sentence and "check that they are" in sentence


# --------------------------------------------------------------------------------------------
# genes × cells tables


def test_a_geo_table_is_transposed_to_the_same_preprocessing_as_the_h5ad(cells, tmp_path):
    h5ad = tmp_path / "cells.h5ad"
    cells.write_h5ad(h5ad)
    table = write_genes_by_cells(cells, tmp_path / "counts.csv.gz")
    expected = preprocess_file(h5ad, PARAMS, OPTIONS)
    got = preprocess_file(table, PARAMS, OPTIONS)
    same_preprocessing(got, expected)
    record = got.uns["scae"]["orientation"]
    assert record["transposed"] and record["decided_by"] == "evidence"
    assert "Input read as genes × cells, transposed" in record["sentence"]
    assert "cell barcodes" in record["sentence"] and "mitochondrial" in record["sentence"]
    assert not expected.uns["scae"]["orientation"]["transposed"]


def test_transpose_false_on_a_geo_table_is_refused_naming_transpose(cells, tmp_path):
    table = write_genes_by_cells(cells, tmp_path / "counts.csv.gz")
    with pytest.raises(InputError, match=r"set datasets\.d\.transpose: true") as err:
        preprocess_file(table, PARAMS, OPTIONS, transpose=False)
    assert "rows are genes" in str(err.value) and "MT-" in str(err.value)
    # the same decision from metadata alone, before any job runs (snakemake -n)
    with pytest.raises(InputError, match=r"set datasets\.d\.transpose: true"):
        planned_orientation(str(table), "d", transpose=False)
    assert planned_orientation(str(table), "d").transposed


@pytest.mark.parametrize(
    ("name", "sep", "description"),
    [("counts.tsv.gz", "\t", False), ("counts.txt.gz", "\t", True), ("counts.csv", ",", True)],
)
def test_text_tables_with_a_description_column_and_gzip(cells, tmp_path, name, sep, description):
    """GEO's layout (gene, description, one column per cell), gzipped or not."""
    table = write_genes_by_cells(cells, tmp_path / name, sep, description)
    read = read_table(table, sep)
    assert read.shape == (cells.n_vars, cells.n_obs)
    assert list(read.obs_names) == list(cells.var_names)
    assert list(read.var_names) == list(cells.obs_names)
    assert sp.issparse(read.X) and (read.X != cells.X.T).nnz == 0
    assert list(read.obs.columns) == (["description"] if description else [])
    names = stored_names(table)
    assert list(names.columns) == list(cells.obs_names)  # the description is no cell
    same_preprocessing(
        preprocess_file(table, PARAMS, OPTIONS), preprocess(cells, PARAMS, dataset="d")
    )


def test_an_r_table_with_one_header_field_fewer_reads_its_row_names(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("AAACATACAACCAC-1\tAAACATTGAGCTAC-1\nCD3E\t1\t0\nLYZ\t0\t5\n")
    read = read_table(path, "\t")
    assert list(read.obs_names) == ["CD3E", "LYZ"]
    assert read.X.toarray().tolist() == [[1, 0], [0, 5]]


def test_text_among_the_counts_is_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("gene,c1,c2,c3\nCD3E,1,0,2\nLYZ,0,low,5\n")
    with pytest.raises(InputError, match=r"bad\.csv: column 'c2' holds text among the counts"):
        read_table(path, ",")


# --------------------------------------------------------------------------------------------
# loom and zarr


def test_loom_and_zarr_read_as_the_h5ad(cells, tmp_path):
    pytest.importorskip("loompy")
    h5ad, loom, zarr = tmp_path / "c.h5ad", tmp_path / "c.loom", tmp_path / "c.zarr"
    cells.write_h5ad(h5ad)
    cells.write_loom(loom)
    cells.write_zarr(zarr)
    assert (format_of(loom), format_of(zarr)) == (".loom", ".zarr")
    expected = preprocess_file(h5ad, PARAMS, OPTIONS)
    for path in (loom, zarr):
        got = preprocess_file(path, PARAMS, OPTIONS)
        same_preprocessing(got, expected)
        assert got.uns["scae"]["orientation"]["decided_by"] == "evidence"
        assert planned_orientation(str(path), "d").transposed is False


# --------------------------------------------------------------------------------------------
# counts found elsewhere


def test_an_error_about_counts_names_the_layer_that_holds_them(cells, tmp_path):
    """scanpy's convention: log-normalized X, integers in layers['counts']."""
    import scanpy as sc

    adata = cells.copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    path = tmp_path / "scanpy_convention.h5ad"
    adata.write_h5ad(path)
    options = DatasetOptions(dataset="bad", require_integers=True)
    with pytest.raises(InputError) as err:
        preprocess_file(path, PARAMS, options, counts="X")
    assert "integer counts are in layers['counts']: set datasets.bad.counts: counts" in str(
        err.value
    )
    # without a count loss the fractions are a warning; it names the layer too
    with pytest.warns(UserWarning, match=r"integer counts are in layers\['counts'\]"):
        preprocess_file(path, PARAMS, DatasetOptions(dataset="bad"), counts="X")
    # nowhere: said so
    del adata.layers["counts"]
    adata.write_h5ad(path)
    with pytest.raises(InputError, match="no X, raw or layer of the input holds integer counts"):
        preprocess_file(path, PARAMS, options, counts="X")


def test_a_mouse_style_prefix_is_named_in_the_mito_warning(cells):
    adata = cells.copy()
    adata.var_names = [name.replace("MT-", "MT.") for name in adata.var_names]
    with pytest.warns(UserWarning, match=r"13 names start with 'MT\.' .*mito_prefix: 'MT\.'"):
        preprocess(adata, PARAMS, dataset="d", mito_prefix="MT-")


# --------------------------------------------------------------------------------------------
# one label class


def test_one_label_class_gives_no_label_metrics():
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(60, 4))
    split = np.array(["train"] * 40 + ["test"] * 20)
    with pytest.warns(UserWarning, match="no label metrics: one class"):
        values = embedding_metrics(embedding, pd.Series(["T cell"] * 60), split)
    assert all(np.isnan(values[name]) for name in LABEL_METRICS)
    assert values["label_classes_test"] == 1
    # one class among training cells only: kNN accuracy alone is undefined
    labels = pd.Series(["T cell"] * 40 + ["B cell", "T cell"] * 10)
    with pytest.warns(UserWarning, match="training cells hold one class"):
        values = embedding_metrics(embedding, labels, split)
    assert np.isnan(values["knn_accuracy"]) and np.isfinite(values["leiden_ari_test"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two classes everywhere: no warning
        two = pd.Series(["T cell", "B cell"] * 30)
        assert np.isfinite(embedding_metrics(embedding, two, split)["knn_accuracy"])


# --------------------------------------------------------------------------------------------
# the workflow on pbmc3k cells written the odd way


#: Datasets of odd_inputs_run that run to summary.tsv; the others are preprocessed only.
SUMMARIZED = ("as_h5ad", "geo_table", "one_class")


@pytest.fixture(scope="module")
def odd_inputs_run(tmp_path_factory):
    """One workflow run over 400 pbmc3k cells written the odd ways, beside the same cells as
    .h5ad: a gzipped genes × cells GEO table and one label class (to summary.tsv); .loom,
    .zarr, a GEO .tsv.gz with a description column, R's ``MT.`` gene names and scanpy's
    convention read with ``counts: X`` (preprocessed only)."""
    import scanpy as sc

    workdir = tmp_path_factory.mktemp("odd_inputs")
    config = small_config(workdir, ["mse"])
    spec = config["datasets"].pop(DATASET)
    base = ad.read_h5ad(spec["path"])
    data = workdir / "data"
    one_class = base.copy()
    one_class.obs["cell_type"] = "T cell"
    one_class.write_h5ad(data / "one_class.h5ad")
    r_names = base.copy()
    r_names.var_names = [name.replace("MT-", "MT.") for name in base.var_names]
    r_names.write_h5ad(data / "r_names.h5ad")
    scanpy_convention = base.copy()
    scanpy_convention.layers["counts"] = base.X.copy()
    sc.pp.normalize_total(scanpy_convention)
    sc.pp.log1p(scanpy_convention)
    scanpy_convention.write_h5ad(data / "scanpy_convention.h5ad")
    base.write_loom(data / "cells.loom")
    base.write_zarr(data / "cells.zarr")
    paths = {
        "as_h5ad": spec["path"],
        "geo_table": write_genes_by_cells(base, data / "geo_counts.csv.gz"),
        "one_class": data / "one_class.h5ad",
        "loom": data / "cells.loom",
        "zarr": data / "cells.zarr",
        "geo_described": write_genes_by_cells(base, data / "geo.tsv.gz", "\t", True),
        "r_names": data / "r_names.h5ad",
        "scanpy_convention": data / "scanpy_convention.h5ad",
    }
    config["datasets"] = {
        name: {**spec, "path": str(path), "label_key": "cell_type" if name == "one_class" else ""}
        for name, path in paths.items()
    }
    configfile = write_config(workdir, config)
    targets = [
        f"results/{name}/{'summary.tsv' if name in SUMMARIZED else 'preprocessed.h5ad'}"
        for name in paths
    ]
    dry = snakemake(workdir, configfile, "-n", *targets)
    succeeded(dry)
    succeeded(snakemake(workdir, configfile, *targets))
    return workdir, dry


@pytest.mark.workflow
def test_a_geo_table_runs_to_the_summary_of_the_same_cells_as_h5ad(odd_inputs_run):
    workdir, dry = odd_inputs_run
    assert "dataset 'geo_table': Input read as genes × cells, transposed" in dry.output

    def numbers(name):
        table = pd.read_csv(workdir / f"results/{name}/summary.tsv", sep="\t")
        return table.drop(columns=["dataset"]).set_index(["model", "seed"]).sort_index()

    pd.testing.assert_frame_equal(numbers("geo_table"), numbers("as_h5ad"))
    text = (workdir / "results/geo_table/summary.md").read_text()
    assert "Input read as genes × cells, transposed, from its names (rows: 13 names" in text
    stored = (workdir / "results/as_h5ad/summary.md").read_text()
    assert "Input read as cells × genes, from its names" in stored


@pytest.mark.workflow
def test_a_one_class_dataset_has_no_label_metric(odd_inputs_run):
    workdir, _ = odd_inputs_run
    summary = pd.read_csv(workdir / "results/one_class/summary.tsv", sep="\t")
    runs = summary[summary["model"] == "mse"]
    assert len(runs) and (runs["label_classes_test"] == 1).all()
    assert not set(LABEL_METRICS) & set(summary.columns)  # (columns all NaN are left out)
    metrics = pd.read_csv(workdir / "results/one_class/metrics.tsv", sep="\t")
    label_rows = metrics[metrics["metric"].isin(LABEL_METRICS)]
    assert len(label_rows) and label_rows["value"].isna().all()
    text = (workdir / "results/one_class/summary.md").read_text()
    assert "No label metrics: one class" in text
    log = (workdir / "logs/one_class/k4/evaluate/seed0.log").read_text()
    assert "hold one class ('T cell')" in log


@pytest.mark.workflow
@pytest.mark.parametrize("name", ["loom", "zarr", "geo_described"])
def test_other_formats_preprocess_as_the_h5ad(odd_inputs_run, name):
    workdir, _ = odd_inputs_run
    expected = ad.read_h5ad(workdir / "results/as_h5ad/preprocessed.h5ad")
    got = ad.read_h5ad(workdir / f"results/{name}/preprocessed.h5ad")
    same_preprocessing(got, expected)


@pytest.mark.workflow
def test_the_preprocess_logs_name_the_prefix_and_the_counts_found(odd_inputs_run):
    workdir, _ = odd_inputs_run
    log = (workdir / "logs/r_names/preprocess.log").read_text()
    assert "13 names start with 'MT.' (MT.ND1, MT.ND2, MT.CO1)" in log
    assert "set datasets.r_names.mito_prefix: 'MT.'" in log
    log = (workdir / "logs/scanpy_convention/preprocess.log").read_text()
    assert (
        "integer counts are in layers['counts']: set datasets.scanpy_convention.counts: counts"
        in log
    )


@pytest.mark.workflow
def test_a_contradicted_transpose_stops_the_dry_run(cells, tmp_path):
    config = small_config(tmp_path, ["mse"])
    table = write_genes_by_cells(cells, tmp_path / "data" / "geo.csv.gz")
    config["datasets"][DATASET].update(path=str(table), label_key="", transpose=False)
    proc = snakemake(tmp_path, write_config(tmp_path, config), "-n")
    assert proc.returncode != 0
    assert f"set datasets.{DATASET}.transpose: true" in proc.output


def test_inputs_read_whole_ask_memory_for_their_whole_size(cells, tmp_path):
    """A genes × cells .h5ad is transposed, so read whole: sized like other whole reads (by
    the bytes on disk, every file of a directory such as a .zarr store), not by its blocks."""
    from scae.data.input_size import preprocess_mem_mb, size_on_disk

    h5ad, zarr = tmp_path / "c.h5ad", tmp_path / "c.zarr"
    cells.write_h5ad(h5ad)
    cells.write_zarr(zarr)
    whole = preprocess_mem_mb(h5ad, "X", 2000, mcv=False, read_whole=True)
    assert whole == int(2000 + 20 * h5ad.stat().st_size / 2**20)
    assert whole != preprocess_mem_mb(h5ad, "X", 2000, mcv=False)
    files = [item.stat().st_size for item in zarr.rglob("*") if item.is_file()]
    assert size_on_disk(zarr) == sum(files) > zarr.stat().st_size
    assert preprocess_mem_mb(zarr, "X", 2000, mcv=False) == int(2000 + 20 * sum(files) / 2**20)
