"""Robust under bad input and faults: each failure a user meets, and the tests that hold it.

- input missing, unreadable, corrupt, of an unknown type:
  test_bad_input_or_config_stops_before_any_job, test_unreadable_input_is_named,
  test_10x_directory_without_matrix_is_named,
  test_preprocess_errors_name_dataset_and_fix[truncated];
- a config typo (unknown key, wrong type, unknown loss, a rank not trained):
  test_bad_input_or_config_stops_before_any_job;
- label_key not in obs: test_missing_label_key_warns_and_everything_else_runs;
- non-integer or negative counts with a count loss, NaN or inf in the matrix:
  test_preprocess_errors_name_dataset_and_fix;
- duplicate gene names, gene IDs without a mitochondrial prefix:
  test_quirky_gene_names_warn_and_run; duplicate cell names (merged samples):
  test_duplicate_barcodes_are_made_unique_and_the_run_…;
- every cell removed by QC, too few cells: test_qc_errors_quote_thresholds_and_counts; cells
  with zero counts after filtering: test_zero_count_cells_are_removed_and_counted,
  test_cosine_of_zero_profiles_is_zero_not_nan;
- training diverges: test_divergence_stops_with_hint_and_leaves_no_model;
- kill -9 mid-training, then a rerun: test_kill_9_mid_training_then_rerun_resumes_exactly;
- the same config and seed twice: test_same_config_and_seed_twice_is_bitwise_identical;
- one training parameter changed: test_changed_loss_parameter_reruns_only_affected_jobs;
- wildcard values: test_unconfigured_or_traversing_targets_yield_no_job;
- model loading: test_every_torch_load_passes_weights_only,
  test_load_model_refuses_pickled_objects;
- outputs appear atomically: test_atomic_path_*, test_scripts_write_outputs_atomically, and the
  workflow cases above (run with --keep-incomplete).

Workflow-level tests run the real ``snakemake`` on a 400-cell subset of pbmc3k in temporary
directories (one small finished run is shared); the rest call the package directly.
"""

from __future__ import annotations

import ast
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import yaml

from scae.config import InputError, check_input_path
from scae.data.params import PreprocessParams
from scae.data.preprocess import preprocess
from scae.evaluation.metrics import per_cell_metrics, rowwise_cosine
from scae.io import atomic_path
from scae.module.losses import cosine_similarity
from scae.train.inference import load_model

from .conftest import REPO, pbmc_subset, snakemake_command, write_small_workflow_config

DATASET = "pbmc_small"
RESULTS = f"results/{DATASET}"
SUMMARY = f"{RESULTS}/summary.tsv"
MSE_METRICS = f"{RESULTS}/k4/metrics/mse/seed0.tsv"
LABEL_METRICS = ["knn_accuracy", "leiden_ari_test", "leiden_nmi_test", "label_silhouette_test"]
SHARED_LOSSES = ["mse", "mse_cosine"]


# --------------------------------------------------------------------------------------------
# helpers


def small_config(workdir: Path, losses=("mse",), n_cells: int = 400) -> dict:
    """A quick real config: 400 pbmc3k cells, 300 HVGs, a [32]-wide net, 5 epochs, no MCV,
    no tuning."""
    path = write_small_workflow_config(workdir, list(losses), [0], n_cells)
    config = yaml.safe_load(path.read_text())
    config["mcv"] = {"enabled": False}
    config["tune"] = {"enabled": False}  # tuning has tests of its own (tests/test_tune.py)
    config["model"] = {"hidden": [32], "latent_dim": 4}
    config["train"].update(max_epochs=5, patience=5, device="cpu")  # bitwise claims: CPU
    return config


def write_config(workdir: Path, config: dict, name: str = "config.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, configfile: Path, *args: str, timeout: int = 600):
    """Run snakemake and return the finished process, whatever its exit status."""
    proc = subprocess.run(
        snakemake_command(workdir, configfile, "--cores", "2", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    proc.output = proc.stdout + proc.stderr
    return proc


def succeeded(proc) -> None:
    if proc.returncode != 0:
        pytest.fail(f"snakemake failed ({proc.returncode}):\n{proc.output[-6000:]}")


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a finished run (results, logs, Snakemake metadata; mtimes kept)."""
    shutil.copytree(source, target, symlinks=True)
    return target


def epochs_logged(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(m) for m in re.findall(r"epoch\s+(\d+)\s+train", log.read_text())]


# --------------------------------------------------------------------------------------------
# the shared small run: mse and mse_cosine, one seed, up to summary.tsv


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("finished")
    write_config(workdir, small_config(workdir, SHARED_LOSSES))
    succeeded(snakemake(workdir, workdir / "config.yaml", SUMMARY))
    return workdir


# --------------------------------------------------------------------------------------------
# bad input and config typos: stopped at parse time, before any job runs


def _set_path(name: str, content: bytes | None = None):
    def mutate(config: dict, workdir: Path) -> None:
        path = workdir / "data" / name
        if content is not None:
            path.write_bytes(content)
        config["datasets"][DATASET]["path"] = str(path)

    return mutate


def _set(*keys, value):
    def mutate(config: dict, workdir: Path) -> None:
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return mutate


PARSE_ERRORS = [
    pytest.param(
        _set_path("nope.h5ad"),
        [r"input file \S*nope\.h5ad does not exist", rf"fix datasets\.{DATASET}\.path"],
        id="missing-input",
    ),
    pytest.param(
        _set_path("counts.xlsx", b"PK\x03\x04 a spreadsheet"),
        [
            r"counts\.xlsx: unsupported file type '\.xlsx'",
            r"accepted formats are \.h5ad, \.zarr, \.loom, \.h5, <directory>, \.csv, \.tsv, \.txt",
        ],
        id="unsupported-extension",
    ),
    pytest.param(
        _set_path("corrupt.h5ad", b"<html><body>404 Not Found</body></html>\n"),
        [
            r"corrupt\.h5ad is not an HDF5 file, so not a valid \.h5ad",
            r"accepted formats are \.h5ad",
            rf"fix datasets\.{DATASET}\.path",
        ],
        id="corrupt-h5ad",
    ),
    pytest.param(
        _set("train", "learnig_rate", value=0.01),
        [
            r"unknown key 'learnig_rate' under train",
            r"allowed keys: batch_size, learning_rate, weight_decay, max_epochs",
        ],
        id="unknown-key",
    ),
    pytest.param(
        _set("datasets", DATASET, "label", value="cell_type"),
        [
            rf"unknown key 'label' under datasets\.{DATASET}",
            r"allowed keys: path, counts, label_key",
        ],
        id="unknown-dataset-key",
    ),
    pytest.param(
        _set("train", "max_epochs", value="ten"),
        [r"train\.max_epochs = 'ten' has the wrong type; expected integer"],
        id="wrong-type",
    ),
    pytest.param(
        _set("losses", value=["mse", "cosin"]),
        [r"losses\[1\] = 'cosin' is not allowed; allowed values: mse, cosine, cosine_embedding"],
        id="unknown-loss",
    ),
    pytest.param(
        _set("model", "reference_rank", value=8),  # small_config's latent_dim is 4
        [
            r"model\.reference_rank = 8 is not one of model\.latent_dim \[4\]",
            r"set it to one of them \(or null for the largest\)",
        ],
        id="reference-rank-not-trained",
    ),
    pytest.param(
        _set("model", "latent_dim", value=[2, 2]),
        [r"model\.latent_dim = \[2, 2\]"],
        id="repeated-rank",
    ),
    pytest.param(
        _set("tune", "space", "learning_rate", value=[0.003, 0.0003]),
        [r"tune\.space\.learning_rate = \[0\.003, 0\.0003\] is not \[low, high\]"],
        id="range-high-to-low",
    ),
    pytest.param(
        _set("tune", "space", "hidden", value=[[64], []]),
        [r"tune\.space\.hidden = \[\[64\], \[\]\] holds an empty architecture"],
        id="empty-architecture",
    ),
]


@pytest.fixture(scope="module")
def parse_dir(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("parse")
    return workdir, small_config(workdir)


@pytest.mark.workflow
@pytest.mark.parametrize("mutate, messages", PARSE_ERRORS)
def test_bad_input_or_config_stops_before_any_job(parse_dir, mutate, messages, request):
    workdir, base = parse_dir
    config = yaml.safe_load(yaml.safe_dump(base))
    mutate(config, workdir)
    configfile = write_config(workdir, config, f"{request.node.callspec.id}.yaml")
    # a real run (not -n): it must stop while parsing, so nothing under results/ or logs/
    proc = snakemake(workdir, configfile, f"{RESULTS}/preprocessed.h5ad")
    assert proc.returncode != 0
    for message in messages:
        assert re.search(message, proc.output), f"{message!r} not in:\n{proc.output[-3000:]}"
    # says where to fix it: the dataset's path key, or the config file holding the typo
    assert f"fix datasets.{DATASET}.path" in proc.output or f"fix it in {configfile}" in proc.output
    assert not (workdir / "results").exists() and not (workdir / "logs").exists()


def test_unreadable_input_is_named(tmp_path, monkeypatch):
    path = tmp_path / "counts.h5ad"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    check_input_path(path, "d")  # readable HDF5: accepted
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # as for chmod 000
    with pytest.raises(
        InputError,
        match=r"counts\.h5ad is not readable \(permission denied\); "
        r"fix datasets\.d\.path",
    ):
        check_input_path(path, "d")


def test_10x_directory_without_matrix_is_named(tmp_path):
    folder = tmp_path / "filtered_feature_bc_matrix"
    folder.mkdir()
    (folder / "barcodes.tsv.gz").write_bytes(b"")
    with pytest.raises(
        InputError,
        match=r"filtered_feature_bc_matrix holds no matrix\.mtx\(\.gz\); "
        r"accepted formats are",
    ):
        check_input_path(folder, "d")
    (folder / "matrix.mtx.gz").write_bytes(b"")
    check_input_path(folder, "d")


# --------------------------------------------------------------------------------------------
# bad matrices: stopped by the preprocess job, with the message in its log and no output


def _fractional(adata):
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray() / 3.0), dtype=np.float32)


def _negative(adata):
    X = adata.X.tocsr().astype(np.float32)
    X.data[:7] = -1.0
    adata.X = X


def _nonfinite(adata):
    X = adata.X.tocsr().astype(np.float32)
    X.data[[0, 10, 20]] = np.nan
    X.data[[30, 40]] = np.inf
    adata.X = X


def _ensembl_with_duplicate(adata):
    names = adata.var["gene_ids"].astype(str).to_numpy().copy()  # ENSG…: no "MT-" prefix
    names[1] = names[0]
    adata.var_names = names


BAD_MATRICES = {
    "fractional": _fractional,
    "negative": _negative,
    "nonfinite": _nonfinite,
    "quirky": _ensembl_with_duplicate,
}


@pytest.fixture(scope="module")
def preprocess_run(tmp_path_factory) -> tuple[Path, object]:
    """One `snakemake -k` over five datasets: four bad matrices and one with odd gene names.

    A count loss (poisson) is configured, so every dataset must hold integer counts.
    """
    workdir = tmp_path_factory.mktemp("preprocess")
    config = small_config(workdir, ["poisson"])
    spec = config["datasets"].pop(DATASET)
    base = pbmc_subset(400)
    for name, change in BAD_MATRICES.items():
        adata = base.copy()
        change(adata)
        path = workdir / "data" / f"{name}.h5ad"
        adata.write_h5ad(path)
        config["datasets"][name] = {**spec, "path": str(path)}
    truncated = workdir / "data" / "truncated.h5ad"
    whole = (workdir / "data" / "quirky.h5ad").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])  # a cut-off download: HDF5 header intact
    config["datasets"]["truncated"] = {**spec, "path": str(truncated)}
    configfile = write_config(workdir, config)
    targets = [f"results/{name}/preprocessed.h5ad" for name in config["datasets"]]
    proc = snakemake(workdir, configfile, "--keep-going", "--keep-incomplete", *targets)
    return workdir, proc


PREPROCESS_ERRORS = [
    pytest.param(
        "fractional",
        [
            r"dataset 'fractional' is not raw counts \(0 negative and \d+ non-integer entries; "
            r"their median distance to the nearest integer is 0\.\d+",
            r"set datasets\.fractional\.counts to the layer holding raw UMI counts",
            r"count losses \(poisson, nb, zinb\) need integers",
        ],
        id="non-integer-with-count-loss",
    ),
    pytest.param(
        "negative",
        [r"dataset 'negative' is not raw counts \(7 negative", r"set datasets\.negative\.counts"],
        id="negative-values",
    ),
    pytest.param(
        "nonfinite",
        [r"dataset 'nonfinite' has 5 NaN or infinite entries", r"datasets\.nonfinite\.counts"],
        id="nan-inf",
    ),
    pytest.param(
        "truncated",
        [r"truncated\.h5ad: could not be read as AnnData", r"check that the file is complete"],
        id="truncated-h5ad",
    ),
]


@pytest.mark.workflow
@pytest.mark.parametrize("dataset, messages", PREPROCESS_ERRORS)
def test_preprocess_errors_name_dataset_and_fix(preprocess_run, dataset, messages):
    workdir, proc = preprocess_run
    assert proc.returncode != 0
    log = workdir / "logs" / dataset / "preprocess.log"
    assert f"logs/{dataset}/preprocess.log" in proc.output  # snakemake points at the log
    text = log.read_text()
    for message in messages:
        assert re.search(message, text), f"{message!r} not in {log}:\n{text[-3000:]}"
    results = workdir / "results" / dataset
    # no output, not even a partial one, although the run used --keep-incomplete
    assert not results.exists() or not any(results.rglob("*"))


@pytest.mark.workflow
def test_quirky_gene_names_warn_and_run(preprocess_run):
    workdir, _ = preprocess_run
    log = (workdir / "logs/quirky/preprocess.log").read_text()
    assert "dataset 'quirky': 1 duplicate gene names made unique" in log
    assert "no gene name starts with mito_prefix 'MT-'" in log
    assert "the mitochondrial filter is skipped" in log
    out = ad.read_h5ad(workdir / "results/quirky/preprocessed.h5ad")
    assert out.var_names.is_unique and out.var_names.str.startswith("ENSG").all()


# --------------------------------------------------------------------------------------------
# preprocessing edge cases (unit level: quick and exact)


def test_qc_errors_quote_thresholds_and_counts(pbmc_small):
    with pytest.raises(
        InputError,
        match=r"400 cells in, 0 kept with min_genes=100000, "
        r"max_pct_mito=5\.0.*lower the QC thresholds",
    ):
        preprocess(
            pbmc_small,
            PreprocessParams(min_genes=100_000),
            dataset="t",
            label_key=None,
            mito_prefix="MT-",
        )
    with pytest.raises(
        InputError,
        match=r"too few cells for a train/val/test split after QC "
        r"\(4 cells in, 4 kept .*split sizes",
    ):
        preprocess(
            pbmc_small[:4].copy(),
            PreprocessParams(),
            dataset="t",
            label_key=None,
            mito_prefix="MT-",
        )


def test_zero_count_cells_are_removed_and_counted(pbmc_small, caplog):
    """Cells empty from the start, and cells whose counts were all in filtered-out genes."""
    X = sp.lil_matrix(pbmc_small.X.astype(np.float32))
    X = sp.hstack([X, sp.csr_matrix(([5.0], ([0], [0])), shape=(X.shape[0], 1))]).tolil()
    X[0, :-1] = 0  # cell 0: counts in one gene detected in no other cell (< min_cells)
    X[1, :] = 0  # cell 1: no counts at all
    adata = ad.AnnData(
        X=sp.csr_matrix(X),
        obs=pbmc_small.obs.copy(),
        var=pd.DataFrame(index=[*pbmc_small.var_names, "ONLY_IN_CELL_0"]),
    )
    with caplog.at_level(logging.INFO, logger="scae"):
        out = preprocess(
            adata,
            PreprocessParams(min_genes=0, n_top_genes=300),
            dataset="t",
            label_key="cell_type",
            mito_prefix="MT-",
        )
    assert "removed 1 cells with zero counts" in caplog.text
    assert "removed 1 cells with zero counts in the genes kept by min_cells=3" in caplog.text
    assert out.n_obs == 398 and not {adata.obs_names[0], adata.obs_names[1]} & set(out.obs_names)
    assert (out.obs["library_size"] > 0).all()
    assert np.isfinite(out.X.data).all()


def test_cosine_of_zero_profiles_is_zero_not_nan():
    truth = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    recon = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(rowwise_cosine(recon, truth), [0.0, 0.0, 0.0])
    table = per_cell_metrics(sp.csr_matrix(truth), recon, np.zeros(3))
    assert np.isfinite(table.to_numpy()).all()
    torch_cos = cosine_similarity(torch.tensor(recon), torch.tensor(truth))
    assert torch.equal(torch_cos, torch.zeros(3, dtype=torch_cos.dtype))


# --------------------------------------------------------------------------------------------
# label_key not in obs


@pytest.mark.workflow
def test_missing_label_key_warns_and_everything_else_runs(tmp_path):
    config = small_config(tmp_path)
    config["datasets"][DATASET]["label_key"] = "celltype"  # the column is called cell_type
    succeeded(snakemake(tmp_path, write_config(tmp_path, config), SUMMARY))
    preprocess_log = (tmp_path / f"logs/{DATASET}/preprocess.log").read_text()
    assert "label_key 'celltype' is not a column of obs" in preprocess_log
    assert "label metrics are skipped" in preprocess_log
    summary = pd.read_csv(tmp_path / SUMMARY, sep="\t")
    assert set(summary["model"]) == {
        "mse",
        "baseline_mean",
        "baseline_pca",
        "baseline_library_size",
    }
    assert not set(LABEL_METRICS) & set(summary.columns)
    assert summary["cosine_mean"].between(-1, 1).all() and summary["mse"].gt(0).all()


@pytest.mark.workflow
def test_duplicate_barcodes_are_made_unique_and_the_run_completes(tmp_path):
    """Two samples merged with anndata.concat share barcodes: every job used to run until
    evaluate crashed on the non-unique index."""
    config = small_config(tmp_path)
    data = Path(config["datasets"][DATASET]["path"])
    cells = ad.read_h5ad(data)
    first, second = cells[:200].copy(), cells[200:].copy()
    second.obs_names = first.obs_names  # the same 10x barcodes in both samples
    ad.concat([first, second]).write_h5ad(data)
    succeeded(snakemake(tmp_path, write_config(tmp_path, config), SUMMARY))
    log = (tmp_path / f"logs/{DATASET}/preprocess.log").read_text()
    assert f"dataset '{DATASET}': 200 duplicate cell names made unique" in log
    assert ad.read_h5ad(tmp_path / f"{RESULTS}/preprocessed.h5ad").obs_names.is_unique
    per_cell = pd.read_csv(tmp_path / f"{RESULTS}/k4/metrics/mse/seed0.per_cell.tsv.gz", sep="\t")
    assert per_cell["cell"].is_unique
    summary = pd.read_csv(tmp_path / SUMMARY, sep="\t")
    assert {"mse", "baseline_pca"} <= set(summary["model"])
    assert summary["cosine_mean"].between(-1, 1).all()


# --------------------------------------------------------------------------------------------
# training faults


@pytest.mark.workflow
def test_divergence_stops_with_hint_and_leaves_no_model(finished_run, tmp_path):
    workdir = copy_run(finished_run, tmp_path / "run")
    model_dir = workdir / f"{RESULTS}/k4/models/mse/seed0"
    shutil.rmtree(model_dir)
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["train"]["learning_rate"] = 1e30  # one Adam step overflows float32: NaN at step 1
    proc = snakemake(
        workdir,
        write_config(workdir, config, "diverge.yaml"),
        "--keep-incomplete",
        f"{RESULTS}/k4/models/mse/seed0/model.pt",
    )
    assert proc.returncode != 0
    log = (workdir / f"logs/{DATASET}/k4/train/mse/seed0.log").read_text()
    assert "TrainingDiverged: loss mse became nan in epoch 1" in log
    assert "lower train.learning_rate (now 1e+30)" in log
    assert not model_dir.exists() or not any(model_dir.iterdir())
    assert "rule preprocess" not in proc.output  # only the changed job ran


def _train_process(root: int, script: str = "train.py"):
    """The python process running a rule's ``script``, among ``root``'s descendants."""
    import psutil

    for child in psutil.Process(root).children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if (
            cmdline
            and "python" in Path(cmdline[0]).name
            and any(arg.endswith(script) for arg in cmdline[1:])
        ):
            return child
    return None


@pytest.mark.workflow
def test_kill_9_mid_training_then_rerun_resumes_exactly(finished_run, tmp_path):
    workdir = copy_run(finished_run, tmp_path / "run")
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    max_epochs = 80
    # small batches: several seconds of training, time to kill it; a checkpoint every epoch
    config["train"].update(
        batch_size=8, max_epochs=max_epochs, patience=max_epochs, checkpoint_interval=0
    )
    configfile = write_config(workdir, config, "long.yaml")
    model_dir = workdir / f"{RESULTS}/k4/models/mse/seed0"
    log = workdir / f"logs/{DATASET}/k4/train/mse/seed0.log"
    checkpoint = workdir / f"{RESULTS}/k4/checkpoints/mse/seed0.pt"

    # the uninterrupted reference
    succeeded(snakemake(workdir, configfile, MSE_METRICS))
    assert epochs_logged(log)[-1] == max_epochs
    reference = (workdir / MSE_METRICS).read_text()
    reference_history = pd.read_csv(model_dir / "history.tsv", sep="\t")
    reference_state = torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]
    assert not checkpoint.exists()  # removed once the model is written

    # the same run, SIGKILLed mid-training
    for kind in ("models", "embeddings", "reconstructions", "metrics"):
        shutil.rmtree(workdir / RESULTS / "k4" / kind / "mse")
    log.unlink()
    console = tmp_path / "killed_run.txt"
    with open(console, "w") as stream:  # a file, not a pipe: a full pipe would stall snakemake
        proc = subprocess.Popen(
            snakemake_command(workdir, configfile, "--cores", "2", MSE_METRICS),
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            done = epochs_logged(log)
            if done and done[-1] >= 5 and checkpoint.exists():
                trainer = _train_process(proc.pid)
                if trainer is not None:
                    trainer.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
        else:
            pytest.fail(
                f"training was never caught running: epochs {epochs_logged(log)}, "
                f"checkpoint {checkpoint.exists()}, exit {proc.poll()}\n"
                f"{console.read_text()[-3000:]}"
            )
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_after = epochs_logged(log)[-1]
    assert proc.returncode != 0, console.read_text()[-3000:]
    assert 5 <= killed_after < max_epochs
    assert checkpoint.exists()
    assert not (model_dir / "model.pt").exists() and not (model_dir / "history.tsv").exists()

    # the rerun resumes from the checkpoint and ends exactly where the reference ended
    succeeded(snakemake(workdir, configfile, MSE_METRICS))
    text = log.read_text()
    resumed = re.search(r"resumed from \S*checkpoints/mse/seed0\.pt after epoch (\d+)", text)
    assert resumed, text[-3000:]
    assert killed_after - 1 <= int(resumed.group(1)) <= killed_after
    assert epochs_logged(log)[0] == int(resumed.group(1)) + 1  # no epoch trained twice
    assert (workdir / MSE_METRICS).read_text() == reference
    history = pd.read_csv(model_dir / "history.tsv", sep="\t")
    pd.testing.assert_frame_equal(
        history.drop(columns="seconds"), reference_history.drop(columns="seconds"), check_exact=True
    )
    state = torch.load(model_dir / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], v) for k, v in reference_state.items())


# --------------------------------------------------------------------------------------------
# reproducibility and incremental reruns


@pytest.mark.workflow
def test_same_config_and_seed_twice_is_bitwise_identical(finished_run, tmp_path):
    configfile = write_config(tmp_path, yaml.safe_load((finished_run / "config.yaml").read_text()))
    succeeded(snakemake(tmp_path, configfile, MSE_METRICS))
    # every value of the metrics table, written at full precision, is the same
    assert (tmp_path / MSE_METRICS).read_text() == (finished_run / MSE_METRICS).read_text()
    first, second = (
        ad.read_h5ad(d / f"{RESULTS}/preprocessed.h5ad") for d in (finished_run, tmp_path)
    )
    assert (first.X != second.X).nnz == 0 and list(first.var_names) == list(second.var_names)
    a, b = (
        torch.load(d / f"{RESULTS}/k4/models/mse/seed0/model.pt", weights_only=True)
        for d in (finished_run, tmp_path)
    )
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())


def _planned_jobs(output: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of each job a dry run lists."""
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?:\n\n|\Z)", output, flags=re.M | re.S)
    planned = []
    for rule, body in jobs:
        wildcards = re.search(r"wildcards: (.*)", body)
        planned.append((rule, wildcards.group(1) if wildcards else ""))
    return planned


@pytest.mark.workflow
def test_changed_loss_parameter_reruns_only_affected_jobs(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    unchanged = snakemake(finished_run, finished_run / "config.yaml", "-n", SUMMARY)
    succeeded(unchanged)
    assert "Nothing to be done" in unchanged.output
    config["loss_params"] = {"mse_cosine": {"alpha": 0.25}}
    configfile = write_config(finished_run, config, "alpha.yaml")
    try:
        proc = snakemake(finished_run, configfile, "-n", SUMMARY)
    finally:
        configfile.unlink()
    succeeded(proc)
    planned = _planned_jobs(proc.output)
    # the changed loss retrains; its seed's losses are scored again together
    assert sorted(rule for rule, _ in planned) == ["evaluate_losses", "summarize", "train"]
    for rule, wildcards in planned:
        if rule == "train":
            assert re.search(r"loss=mse_cosine\b", wildcards), (rule, wildcards)
    assert "params" in proc.output.lower()  # the reason: a changed parameter


WILDCARD_TARGETS = [
    pytest.param("results/../x/summary.tsv", id="traversal"),
    pytest.param(
        f"{RESULTS}/shared/metrics/baseline/../../../../../etc/passwd.tsv", id="deep-traversal"
    ),
    pytest.param("results/other/summary.tsv", id="unconfigured-dataset"),
    pytest.param(f"{RESULTS}/x/preprocessed.h5ad", id="slash-in-dataset"),
    pytest.param(f"{RESULTS}/k4/models/cosine/seed0/model.pt", id="unconfigured-loss"),
    pytest.param(f"{RESULTS}/k4/models/mse/x/seed0/model.pt", id="slash-in-loss"),
    pytest.param(f"{RESULTS}/k4/models/mse/seed0x/model.pt", id="non-numeric-seed"),
    pytest.param(f"{RESULTS}/k5/models/mse/seed0/model.pt", id="unconfigured-rank"),
]


@pytest.mark.workflow
@pytest.mark.parametrize("target", WILDCARD_TARGETS)
def test_unconfigured_or_traversing_targets_yield_no_job(finished_run, target):
    proc = snakemake(finished_run, finished_run / "config.yaml", "-n", target)
    assert proc.returncode != 0
    assert "MissingRuleException" in proc.output and "No rule to produce" in proc.output
    assert not _planned_jobs(proc.output)


# --------------------------------------------------------------------------------------------
# model loading: weights only


def _torch_load_calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "load"
                and isinstance(func.value, ast.Name)
                and func.value.id == "torch"
            ) or (
                isinstance(func, ast.Name)
                and func.id == "load"
                and "from torch import load" in path.read_text()
            ):
                yield node


def test_every_torch_load_passes_weights_only():
    sources = sorted([*(REPO / "scae").rglob("*.py"), *(REPO / "scripts").glob("*.py")])
    calls = []
    for path in sources:
        text = path.read_text()
        assert not re.search(r"^\s*(import pickle|from pickle import|import dill)", text, re.M), (
            f"{path}: unpickles outside torch.load(weights_only=True)"
        )
        for call in _torch_load_calls(path):
            keywords = {k.arg: k.value for k in call.keywords}
            ok = isinstance(keywords.get("weights_only"), ast.Constant) and (
                keywords["weights_only"].value is True
            )
            calls.append((f"{path.name}:{call.lineno}", ok))
    assert calls, "no torch.load call found: the check would be vacuous"
    assert all(ok for _, ok in calls), [where for where, ok in calls if not ok]


class _Exploit:
    """Unpickling this creates a marker file: arbitrary code execution in miniature."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _model_file(tmp_path: Path, extra) -> Path:
    from scae.module.network import AutoencoderModule, ModelParams

    params = ModelParams(n_genes=10, hidden=(4,), latent_dim=2, output="expression")
    path = tmp_path / "model.pt"
    torch.save(
        {
            "state_dict": AutoencoderModule(params).state_dict(),
            "model_params": params.to_dict(),
            "extra": extra,
        },
        path,
    )
    return path


def test_load_model_refuses_pickled_objects(tmp_path):
    path = _model_file(tmp_path, None)
    load_model(path, torch.device("cpu"))  # an honest model file loads
    marker = tmp_path / "pwned"
    for payload in (_Exploit(marker), shutil.rmtree):  # an object, a plain function
        path = _model_file(tmp_path, payload)
        with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
            load_model(path, torch.device("cpu"))
        assert not marker.exists()
    # the exploit is real: a full unpickle would have run it
    torch.load(_model_file(tmp_path, _Exploit(marker)), weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------------------------
# atomic outputs


def test_atomic_path_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "results" / "x.h5ad"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("the job died")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary file either


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "x.tsv"
    target.write_text("old result")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("new, unfinished")
            raise KeyboardInterrupt
    assert target.read_text() == "old result"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target  # same file system: atomic rename
        tmp.write_text("new result")
    assert target.read_text() == "new result"
    assert [p.name for p in tmp_path.iterdir()] == ["x.tsv"]


WRITERS = {
    "write_h5ad",
    "to_csv",
    "save",
    "savefig",
    "write_text",
    "write_bytes",
    "open",
    "to_parquet",
    "write",
    "copy",
    "copyfile",
    "move",
}


#: Writers that go through atomic_path themselves (Autoencoder.save: each file it writes).
ATOMIC_WRITERS = {"model.save"}


def test_scripts_write_outputs_atomically():
    """No script writes straight onto a rule's output path: always through atomic_path."""
    direct = []
    for path in sorted((REPO / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = [*node.args, *(k.value for k in node.keywords)]
            if ast.unparse(func) in ATOMIC_WRITERS:
                continue
            if name in WRITERS and any(".output" in ast.unparse(a) for a in args):
                direct.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not direct, direct
