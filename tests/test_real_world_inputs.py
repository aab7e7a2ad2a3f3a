"""AnnData as people have it: partly annotated cells, tiny datasets, counts stored as floats
with conversion noise, per-dataset QC, and what the readers report keeping.

Workflow-level tests run the real ``snakemake`` on pbmc3k cells (a 400-cell subset, or a few
hand-picked cells at the size boundary) and assert on its logs, messages and numbers; the
rest call the package directly.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
from sklearn.neighbors import KNeighborsClassifier

from scae.config import InputError
from scae.data.checks import COUNT_TOLERANCE, validate_counts
from scae.data.params import PreprocessParams
from scae.data.preprocess import preprocess
from scae.evaluation.markdown import markdown_summary
from scae.sizes import MIN_GENES, SizeNeeds, input_shape

from .conftest import PBMC3K, pbmc_subset
from .test_out_of_core import _write_10x_v3
from .test_robustness import (
    DATASET,
    RESULTS,
    SUMMARY,
    small_config,
    snakemake,
    succeeded,
    write_config,
)

# --------------------------------------------------------------------------------------------
# cells without a label


def _unlabel_every_tenth(adata: ad.AnnData) -> np.ndarray:
    """Set every tenth cell's cell_type to NaN (an object column, as after a partial
    annotation) and return which cells lost their label."""
    labels = adata.obs["cell_type"].astype(object).copy()
    missing = np.arange(adata.n_obs) % 10 == 0
    labels[missing] = np.nan
    adata.obs["cell_type"] = labels
    return missing


@pytest.mark.workflow
def test_unlabelled_cells_train_but_label_metrics_use_labelled_cells_only(tmp_path):
    config = small_config(tmp_path)
    data = Path(config["datasets"][DATASET]["path"])
    cells = ad.read_h5ad(data)
    missing = _unlabel_every_tenth(cells)
    cells.write_h5ad(data)
    # and this dataset's own QC (a per-dataset preprocess override), stated in summary.md
    config["datasets"][DATASET]["preprocess"] = {"min_genes": 150}
    succeeded(snakemake(tmp_path, write_config(tmp_path, config), SUMMARY))

    log = (tmp_path / f"logs/{DATASET}/preprocess.log").read_text()
    assert (
        f"dataset '{DATASET}': {missing.sum()} of 400 cells that passed QC have no label "
        "in obs['cell_type']"
    ) in log
    assert "label metrics are computed on labelled cells only" in log
    assert "min_genes=150" in log
    out = ad.read_h5ad(tmp_path / f"{RESULTS}/preprocessed.h5ad")
    assert out.n_obs == 400  # unlabelled cells are trained on and reconstructed
    unlabelled = out.obs["cell_type"].isna()
    assert unlabelled.sum() == missing.sum() and "nan" not in out.obs["cell_type"].cat.categories
    assert set(out.obs_names[unlabelled]) == set(cells.obs_names[missing])
    # they form a stratum of their own: ~20 % of them are test cells, as of every type
    assert (out.obs["split"][unlabelled] == "test").sum() == round(0.2 * missing.sum())

    metrics = pd.read_csv(tmp_path / f"{RESULTS}/k4/metrics/mse/seed0.tsv", sep="\t")
    value = metrics.set_index("metric")["value"]
    split = out.obs["split"].to_numpy()
    labelled = ~unlabelled.to_numpy()
    assert value["label_cells_test"] == ((split == "test") & labelled).sum()
    assert value["label_cells_train"] == ((split == "train") & labelled).sum()
    # knn_accuracy recomputed independently with sklearn on labelled cells only
    embedding = ad.read_h5ad(tmp_path / f"{RESULTS}/k4/embeddings/mse/seed0.h5ad")
    z = embedding[out.obs_names].obsm["X_scae"]
    labels = out.obs["cell_type"].astype(str).to_numpy()
    train, test = (split == "train") & labelled, (split == "test") & labelled
    reference = KNeighborsClassifier(n_neighbors=15).fit(z[train], labels[train])
    assert value["knn_accuracy"] == pytest.approx(
        (reference.predict(z[test]) == labels[test]).mean()
    )
    summary = (tmp_path / f"{RESULTS}/summary.md").read_text()
    assert "Preprocessed with QC min_genes = 150, max_pct_mito = 5.0" in summary


def test_a_label_column_without_labels_is_no_label_key(pbmc_small):
    adata = pbmc_small.copy()
    adata.obs["cell_type"] = pd.Series(np.nan, index=adata.obs_names, dtype=object)
    with pytest.warns(
        UserWarning,
        match=r"obs\['cell_type'\] has no labels \(missing for all "
        r"400 cells that passed QC\); as without a label_key",
    ):
        out = preprocess(
            adata, PreprocessParams(n_top_genes=300), dataset="t", label_key="cell_type"
        )
    assert out.uns["scae"]["label_key"] == ""


def test_missing_labels_keep_the_split_of_labelled_cells_stratified(pbmc_small):
    """The unlabelled cells are one group of their own; every cell type keeps its share."""
    adata = pbmc_small.copy()
    missing = _unlabel_every_tenth(adata)
    with pytest.warns(UserWarning, match="have no label"):
        out = preprocess(
            adata, PreprocessParams(n_top_genes=300), dataset="t", label_key="cell_type"
        )
    for label, group in out.obs.groupby("cell_type", observed=True, dropna=False):
        n = len(group)
        n_test = round(0.2 * n)
        if n_test + round(0.1 * n) < n:
            assert (group["split"] == "test").sum() == n_test, label
    assert out.obs["cell_type"].isna().sum() == missing.sum()


# --------------------------------------------------------------------------------------------
# datasets too small for the later stages


def _qc_passing_cells(n_per_type: tuple[int, int]) -> ad.AnnData:
    """Real pbmc3k cells of its two commonest types that pass the default QC (≥ 200 genes,
    ≤ 5 % mitochondrial counts), ``n_per_type`` of each."""
    full = ad.read_h5ad(PBMC3K)
    X = sp.csr_matrix(full.X)
    mito = np.asarray(full.var_names.str.upper().str.startswith("MT-"))
    totals = np.asarray(X.sum(axis=1)).ravel()
    pct = 100 * np.asarray(X[:, mito].sum(axis=1)).ravel() / totals
    passes = (np.diff(X.indptr) >= 200) & (pct <= 5)
    types = full.obs["cell_type"].value_counts().index[:2]
    rows = np.concatenate(
        [
            np.flatnonzero(passes & (full.obs["cell_type"] == name).to_numpy())[:n]
            for name, n in zip(types, n_per_type)
        ]
    )
    return full[np.sort(rows)].copy()


def _boundary_config(workdir: Path, n_per_type: tuple[int, int]) -> Path:
    """The default workflow's stages on a tiny real dataset: mse and cosine_embedding (its
    cluster negatives need the training-cell Leiden graph), MCV, tuning, label metrics."""
    config = small_config(workdir, ["mse", "cosine_embedding"])
    config["mcv"] = {"enabled": True}
    config["tune"] = {
        "n_trials": 2,
        "max_epochs": 5,
        "space": {"batch_size": [8, 16], "hidden": [[32], [16]]},
    }
    config["train"]["batch_size"] = 8
    data = Path(config["datasets"][DATASET]["path"])
    _qc_passing_cells(n_per_type).write_h5ad(data)
    return write_config(workdir, config)


def test_size_needs_follow_each_stage():
    assert SizeNeeds(latent_dim=4).minimums() == {"train": 5, "val": 1, "test": 4}
    assert SizeNeeds(latent_dim=4, clusters=True).minimums()["train"] == 16
    assert SizeNeeds(latent_dim=32, clusters=True).minimums()["train"] == 33
    # 47 cells: round(9.4) = 9 test, round(4.7) = 5 val, 33 train; 48 at the default sizes
    assert SizeNeeds(latent_dim=32).cells_in_all(0.2, 0.1) == 48
    with pytest.raises(
        InputError,
        match=r"has 20 cells × 50 genes, too few before QC.*"
        r"21 cells at the very least",
    ):
        SizeNeeds(latent_dim=4, clusters=True).check_input(20, 50, "f.h5ad", "d")
    SizeNeeds(latent_dim=4, clusters=True).check_input(21, MIN_GENES, "f.h5ad", "d")
    with pytest.raises(InputError, match="9 genes, too few"):
        SizeNeeds(latent_dim=4).check_input(1000, MIN_GENES - 1, "f.h5ad", "d")


def test_input_shape_reads_metadata_of_every_h5ad_layout(tmp_path, pbmc_small):
    adata = pbmc_small[:50].copy()
    for name, X in {
        "csr": sp.csr_matrix(adata.X),
        "csc": sp.csc_matrix(adata.X),
        "dense": adata.X.toarray(),
    }.items():
        ad.AnnData(X=X, obs=adata.obs, var=adata.var).write_h5ad(tmp_path / f"{name}.h5ad")
        assert input_shape(tmp_path / f"{name}.h5ad") == (50, adata.n_vars), name
    assert input_shape(tmp_path / "csr.h5ad", "nope") is None  # preprocess names it


@pytest.mark.workflow
def test_dataset_too_small_before_qc_stops_at_parse_time(tmp_path):
    configfile = _boundary_config(tmp_path, (10, 10))
    proc = snakemake(tmp_path, configfile, "-n")
    assert proc.returncode != 0
    assert (
        f"dataset '{DATASET}' has 20 cells × 32738 genes, too few before QC: later stages "
        "need at least 16 training cells"
    ) in proc.output
    assert "negative_sampling: cluster needs 16 for the training-cell neighbour graph" in (
        proc.output
    )
    assert "21 cells at the very least" in proc.output
    assert not (tmp_path / "results").exists()


@pytest.mark.workflow
def test_one_cell_below_the_minimum_fails_clearly_at_preprocess(tmp_path):
    """11 + 10 cells: stratified, 15 train / 2 val / 4 test; cluster negatives need 16."""
    configfile = _boundary_config(tmp_path, (11, 10))
    proc = snakemake(tmp_path, configfile, "--keep-incomplete")
    assert proc.returncode != 0
    log = (tmp_path / f"logs/{DATASET}/preprocess.log").read_text()
    for message in [
        (
            rf"dataset '{DATASET}': too few cells for the later stages after QC and the split: "
            r"15 training cells \(need 16\)"
        ),
        (
            r"21 cells in, 21 kept with min_genes=200, max_pct_mito=5\.0; split train 15 / val 2 / "
            r"test 4"
        ),
        r"model\.latent_dim = 4 needs latent_dim \+ 1 for PCA at that rank",
        r"Fix: use more cells \(about 23 after QC",
    ]:
        assert re.search(message, log), f"{message!r} not in:\n{log[-3000:]}"
    assert not list((tmp_path / "results").rglob("*.h5ad"))  # no training job ran
    assert not (tmp_path / f"logs/{DATASET}/k4/train").exists()


@pytest.mark.workflow
def test_at_the_minimum_the_whole_workflow_completes(tmp_path):
    """11 + 11 cells: 16 train / 2 val / 4 test, exactly what the stages need."""
    configfile = _boundary_config(tmp_path, (11, 11))
    succeeded(snakemake(tmp_path, configfile))
    out = ad.read_h5ad(tmp_path / f"{RESULTS}/preprocessed.h5ad")
    assert out.obs["split"].value_counts().to_dict() == {"train": 16, "val": 2, "test": 4}
    summary = pd.read_csv(tmp_path / SUMMARY, sep="\t").set_index("model")
    assert {"mse", "cosine_embedding", "baseline_pca"} <= set(summary.index)
    assert summary["cosine_mean"].dropna().between(-1, 1).all()
    assert np.isfinite(summary.loc[["baseline_pca_mcv_rank", "mse"], "mcv_mse"]).all()
    assert summary.loc["baseline_pca", "embedding_dim"] == 4
    assert np.isfinite(summary.loc[["mse", "cosine_embedding"], "knn_accuracy"]).all()
    assert (summary["label_cells_test"].dropna() == 4).all()
    assert (tmp_path / f"{RESULTS}/plots/umap.png").stat().st_size > 0


# --------------------------------------------------------------------------------------------
# counts stored as floats


def _with_noise(adata: ad.AnnData, size: float, seed: int = 0) -> ad.AnnData:
    noisy = adata.copy()
    X = sp.csr_matrix(noisy.X, dtype=np.float64)
    X.data += np.random.default_rng(seed).uniform(-size, size, X.nnz)
    noisy.X = X.astype(np.float32)
    return noisy


@pytest.fixture(scope="module")
def float_counts_run(tmp_path_factory):
    """A count loss (nb) on counts with float32 conversion noise, and on counts + 0.3."""
    workdir = tmp_path_factory.mktemp("float_counts")
    config = small_config(workdir, ["nb"])
    spec = config["datasets"].pop(DATASET)
    base = pbmc_subset(400)
    for name, size in {"noisy": 1e-6, "fractional": 0.3}.items():
        path = workdir / "data" / f"{name}.h5ad"
        _with_noise(base, size).write_h5ad(path)
        config["datasets"][name] = {**spec, "path": str(path)}
    targets = [f"results/{name}/preprocessed.h5ad" for name in config["datasets"]]
    proc = snakemake(workdir, write_config(workdir, config), "--keep-going", *targets)
    return workdir, base, proc


@pytest.mark.workflow
def test_counts_with_conversion_noise_are_rounded_and_used(float_counts_run):
    workdir, base, _ = float_counts_run
    log = (workdir / "logs/noisy/preprocess.log").read_text()
    match = re.search(
        r"dataset 'noisy': (\d+) stored values are integers with conversion "
        r"noise \(largest deviation ([\d.e-]+), within the tolerance 0\.001\); "
        r"they are rounded to the nearest integer",
        log,
    )
    assert match, log[-3000:]
    # float32 absorbs the noise of the larger counts; most values keep some
    assert int(match[1]) > 0.5 * base.X.nnz and float(match[2]) <= 2e-6
    out = ad.read_h5ad(workdir / "results/noisy/preprocessed.h5ad")
    clean = preprocess(
        base,
        PreprocessParams(n_top_genes=300),
        dataset="clean",
        label_key="cell_type",
        require_integers=True,
    )
    assert list(out.var_names) == list(clean.var_names)
    assert (out.layers["counts"] != clean.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(out.obs["split"], clean.obs["split"])


@pytest.mark.workflow
def test_values_beyond_the_tolerance_are_refused_with_their_distance(float_counts_run):
    workdir, _, proc = float_counts_run
    assert proc.returncode != 0
    log = (workdir / "logs/fractional/preprocess.log").read_text()
    match = re.search(
        r"dataset 'fractional' is not raw counts \(0 negative and \d+ non-integer "
        r"entries; their median distance to the nearest integer is ([\d.]+), "
        r"beyond the 0\.001 of conversion noise",
        log,
    )
    assert match, log[-3000:]
    assert float(match[1]) == pytest.approx(0.15, abs=0.01)  # |U(-0.3, 0.3)| has median 0.15
    assert "set datasets.fractional.counts to the layer holding raw UMI counts" in log
    assert not (workdir / "results/fractional/preprocessed.h5ad").exists()


def test_noise_tolerance_boundary():
    counts = sp.csr_matrix(np.array([[3.0, 0.0, 7.0], [1.0, 2.0, 0.0]]))
    within = counts.copy()
    within.data = within.data + COUNT_TOLERANCE * np.array([0.99, -0.99, 0.5, 0])
    with pytest.warns(UserWarning, match="rounded to the nearest integer"):
        assert validate_counts(within, "f.h5ad", "d", require_integers=True)
    beyond = counts.copy()
    beyond.data = beyond.data + np.array([2 * COUNT_TOLERANCE, 0, 0, 0])
    with pytest.raises(InputError, match=r"1 non-integer entries; their median distance"):
        validate_counts(beyond, "f.h5ad", "d", require_integers=True)
    near_zero = sp.csr_matrix(np.array([[-1e-7, 2.0]]))  # noise around 0 is not negative
    with pytest.warns(UserWarning, match="rounded"):
        assert validate_counts(near_zero, "f.h5ad", "d", require_integers=True)
    assert not validate_counts(counts, "f.h5ad", "d", require_integers=True)


def test_rounded_noise_around_zero_is_no_detected_gene(pbmc_small):
    """A value of 1e-7 where the count is 0 must not count towards min_genes."""
    adata = pbmc_small.copy()
    X = sp.csr_matrix(adata.X, dtype=np.float32).toarray()
    X[X == 0] = 1e-7  # every gene 'detected' unless the noise is dropped
    adata.X = sp.csr_matrix(X)
    with pytest.warns(UserWarning, match="rounded"):
        noisy = preprocess(adata, PreprocessParams(n_top_genes=300), dataset="t")
    clean = preprocess(pbmc_small, PreprocessParams(n_top_genes=300), dataset="t")
    assert noisy.n_obs == clean.n_obs and list(noisy.var_names) == list(clean.var_names)
    assert (noisy.layers["counts"] != clean.layers["counts"]).nnz == 0


# --------------------------------------------------------------------------------------------
# per-dataset preprocessing


@pytest.mark.workflow
def test_a_dataset_preprocess_override_reruns_only_that_dataset(tmp_path):
    config = small_config(tmp_path)
    spec = config["datasets"].pop(DATASET)
    for name in ("first", "second"):
        config["datasets"][name] = dict(spec)
    targets = ["results/first/preprocessed.h5ad", "results/second/preprocessed.h5ad"]
    succeeded(snakemake(tmp_path, write_config(tmp_path, config), *targets))
    config["datasets"]["second"]["preprocess"] = {"min_genes": 300, "n_top_genes": 200}
    configfile = write_config(tmp_path, config)
    proc = snakemake(tmp_path, configfile, "-n", *targets)
    succeeded(proc)
    assert "output: results/second/preprocessed.h5ad" in proc.output
    assert "output: results/first/preprocessed.h5ad" not in proc.output
    succeeded(snakemake(tmp_path, configfile, *targets))
    first = ad.read_h5ad(tmp_path / "results/first/preprocessed.h5ad")
    second = ad.read_h5ad(tmp_path / "results/second/preprocessed.h5ad")
    assert first.n_vars == 300 and second.n_vars == 200
    assert second.n_obs < first.n_obs and second.uns["scae"]["preprocess"]["min_genes"] == 300


@pytest.mark.workflow
def test_a_bad_dataset_preprocess_override_is_named(tmp_path):
    config = small_config(tmp_path)
    config["datasets"][DATASET]["preprocess"] = {"min_gene": 50}
    proc = snakemake(tmp_path, write_config(tmp_path, config), "-n")
    assert proc.returncode != 0
    assert (
        f"unknown key 'min_gene' under datasets.{DATASET}.preprocess; allowed keys: "
        "min_genes, min_cells"
    ) in proc.output


def test_dataset_override_schema_matches_the_preprocess_section():
    """The override takes every preprocess key with the same type and range, no default."""
    from .conftest import REPO

    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())
    top = schema["properties"]["preprocess"]["properties"]
    override = schema["definitions"]["dataset"]["properties"]["preprocess"]["properties"]

    def limits(section: dict, drop: tuple[str, ...]) -> dict:
        return {
            key: {k: v for k, v in spec.items() if k not in drop} for key, spec in section.items()
        }

    assert limits(top, ("default", "description")) == limits(override, ("description",))
    assert not any("default" in spec for spec in override.values())


def test_summary_states_the_preprocessing():
    tidy = pd.DataFrame(
        {
            "dataset": "d",
            "kind": "autoencoder",
            "model": "mse",
            "rank": 32,
            "seed": 0,
            "metric": ["centred_cosine_mean"],
            "value": [0.4],
        }
    )
    empty = pd.DataFrame(columns=["family"])
    text = markdown_summary(tidy, empty, "d", preprocess=vars(PreprocessParams(min_genes=50)))
    assert (
        "Preprocessed with QC min_genes = 50, max_pct_mito = 5.0, min_cells = 3 (genes), "
        "2000 HVGs, target_sum = 10000; split test_fraction = 0.2"
    ) in text


# --------------------------------------------------------------------------------------------
# what the readers keep


def test_10x_h5_reader_logs_the_feature_types_it_kept(tmp_path, caplog):
    from scae.data.readers import open_counts

    X = sp.random(30, 6, density=0.5, random_state=0, format="csr", dtype=np.float32)
    X.data = np.round(X.data * 10) + 1
    types = ["Gene Expression"] * 4 + ["Antibody Capture"] * 2
    _write_10x_v3(
        tmp_path / "a.h5", X, [f"G{i}" for i in range(6)], [f"C{i}" for i in range(30)], types
    )
    with caplog.at_level(logging.INFO, logger="scae"), open_counts(tmp_path / "a.h5") as rows:
        assert rows.shape == (30, 4)
    assert (
        "features by type: 4 Gene Expression, 2 Antibody Capture; only the 4 Gene "
        "Expression features are used"
    ) in caplog.text


def test_more_hvgs_asked_than_genes_left_logs_all_genes_used(pbmc_small, caplog):
    adata = pbmc_small[:, :800].copy()
    with caplog.at_level(logging.INFO, logger="scae"):
        out = preprocess(adata, PreprocessParams(n_top_genes=2000, min_genes=10), dataset="t")
    match = re.search(
        r"n_top_genes=2000 is more than the (\d+) genes kept by min_cells=3: "
        r"all of them are used",
        caplog.text,
    )
    assert match and out.n_vars <= int(match[1])
