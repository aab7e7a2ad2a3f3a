"""Tuning (scae.tune) and convergence: validation cells only, the same budget for every loss,
reproducible trials, clean restarts, and final runs that stop by patience."""

import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import scae
from scae.losses import LOSSES
from scae.summary import convergence, read_histories
from scae.train import TrainParams
from scae.tune import SearchSpace, TuneParams, tune

from .conftest import pbmc_subset
from .test_robustness import (
    DATASET,
    RESULTS,
    _train_process,
    small_config,
    snakemake,
    snakemake_command,
    succeeded,
    write_config,
)

SPACE = SearchSpace(batch_size=(64, 128), hidden=((32,), (16,)))
BUDGET = TuneParams(n_trials=3, max_epochs=6, space=SPACE)
TRAIN = TrainParams(batch_size=64, learning_rate=1e-3, max_epochs=100, patience=3)


@pytest.fixture(scope="module")
def adata():
    pre = scae.preprocess(pbmc_subset(400), scae.PreprocessParams(n_top_genes=150),
                          label_key="cell_type")
    scae.Autoencoder.setup_anndata(pre, labels_key="cell_type")
    return pre


def _tune(adata, loss="mse", params=BUDGET, train=TRAIN):
    model = scae.Autoencoder(adata, loss, hidden=(32,), latent_dim=4)
    return tune(model, train, params, device="cpu")


def _perturbed(adata, split: str):
    """A copy whose ``split`` cells have other expression and other counts."""
    other = adata.copy()
    rows = np.flatnonzero(other.obs["split"] == split)
    x, counts = other.X.tolil(), other.layers["counts"].tolil()
    rng = np.random.default_rng(1)
    for row in rows:
        x[row] = x[row].multiply(rng.uniform(0.5, 2.0))
        counts[row] = counts[row] * 3
    other.X, other.layers["counts"] = x.tocsr(), counts.tocsr()
    return other


def test_tuning_never_reads_test_cells(adata):
    trials, best = _tune(adata)
    changed_trials, changed_best = _tune(_perturbed(adata, "test"))
    pd.testing.assert_frame_equal(trials, changed_trials, check_exact=True)
    assert best == changed_best
    # the comparison can fail: the same change to validation cells changes the scores
    val_trials, _ = _tune(_perturbed(adata, "val"))
    assert not np.array_equal(trials["score"], val_trials["score"])


def test_trials_are_reproducible_and_trial_0_is_the_configured_point(adata):
    trials, best = _tune(adata)
    again, best_again = _tune(adata)
    pd.testing.assert_frame_equal(trials, again, check_exact=True)
    assert best == best_again
    first = trials.iloc[0]
    assert (first["learning_rate"], first["batch_size"], first["hidden"]) == (1e-3, 64, "32")
    assert len(trials) == BUDGET.n_trials
    assert set(trials["state"]) <= {"complete", "pruned", "fail"}
    complete = trials[trials["state"] == "complete"]
    assert best["score"] == complete["score"].min()  # own loss: lower is better
    assert best["trial"] == int(complete.loc[complete["score"].idxmin(), "trial"])
    assert set(best["model"]) == {"dropout", "hidden"}
    assert set(best["train"]) == {"learning_rate", "weight_decay", "batch_size"}


def test_a_common_criterion_is_maximised_where_larger_is_better(adata):
    params = TuneParams(n_trials=3, max_epochs=6, space=SPACE, criterion="val_centred_cosine")
    trials, best = _tune(adata, params=params)
    complete = trials[trials["state"] == "complete"]
    assert best["score"] == complete["score"].max() and -1 <= best["score"] <= 1


def test_every_loss_gets_the_same_budget(adata):
    for loss in ("cosine", "nb"):
        trials, best = _tune(adata, loss)
        assert len(trials) == BUDGET.n_trials and best["n_trials"] == BUDGET.n_trials
        assert trials["epochs"].max() <= BUDGET.max_epochs


def test_settings_outside_the_space_start_no_trial(adata, caplog):
    with caplog.at_level("INFO", logger="scae"):
        trials, _ = _tune(adata, train=TrainParams(batch_size=8, max_epochs=100, patience=3))
    assert "lie outside tune.space" in caplog.text
    assert set(trials["batch_size"]) <= {64, 128}


# --------------------------------------------------------------------------------------------
# the workflow


@pytest.mark.workflow
def test_workflow_tuned_every_loss_alike_and_training_used_the_choice(small_run):
    config = yaml.safe_load((small_run / "config.yaml").read_text())
    n_trials = config["tune"]["n_trials"]
    results = small_run / "results/pbmc_small"
    for loss in LOSSES:
        trials = pd.read_csv(results / f"tuning/{loss}/trials.tsv", sep="\t")
        assert len(trials) == n_trials, loss
        best = yaml.safe_load((results / f"tuning/{loss}/best.yaml").read_text())
        model = torch.load(results / f"models/{loss}/seed0/model.pt", weights_only=True)
        assert model["train_params"]["batch_size"] == best["train"]["batch_size"], loss
        assert model["model_params"]["hidden"] == best["model"]["hidden"], loss
        assert model["train_params"]["learning_rate"] == best["train"]["learning_rate"], loss
    # the outputs say what was used: metrics.tsv's setting_* rows and summary.md's table
    tidy = pd.read_csv(results / "metrics.tsv", sep="\t")
    mse = tidy[(tidy["model"] == "mse") & tidy["metric"].str.startswith("setting_")]
    best = yaml.safe_load((results / "tuning/mse/best.yaml").read_text())
    values = mse.groupby("metric")["value"].agg(["min", "max"])
    assert values.loc["setting_learning_rate", "min"] == pytest.approx(
        best["train"]["learning_rate"])
    assert (values["min"] == values["max"]).all()  # every seed alike
    assert values.loc["setting_tuned", "min"] == 1
    assert values.loc["setting_hidden_1", "min"] == best["model"]["hidden"][0]
    markdown = (results / "summary.md").read_text()
    assert "Settings each loss trained with" in markdown
    settings = markdown[markdown.index("Settings each loss trained with"):]
    row = next(line for line in settings.splitlines() if line.startswith("| mse | "))
    assert row.endswith("| yes |") and f"{best['train']['batch_size']}" in row
    assert (results / "plots/tuning.png").stat().st_size > 10_000


@pytest.mark.workflow
def test_workflow_runs_converge_by_patience(small_run):
    """No final run stopped at max_epochs while its best epoch was among the last
    ``patience`` epochs (the MCV variant's runs included)."""
    config = yaml.safe_load((small_run / "config.yaml").read_text())
    histories = read_histories((small_run / "results").glob("*/models/*/seed*/history.tsv"))
    assert len(histories) == len(LOSSES) * (2 + 1)  # two seeds, and MCV's one
    runs = convergence(histories, config["train"]["max_epochs"], config["train"]["patience"])
    assert runs["converged"].all(), runs[~runs["converged"]]


@pytest.mark.workflow
def test_killed_tuning_job_restarts_cleanly(tmp_path):
    config = small_config(tmp_path)
    config["tune"] = {"n_trials": 3, "max_epochs": 40,
                      "space": {"batch_size": [8], "hidden": [[32]]}}  # slow trials
    configfile = write_config(tmp_path, config)
    target = f"{RESULTS}/tuning/mse/best.yaml"
    best = tmp_path / target
    trials = best.with_name("trials.tsv")
    log = tmp_path / f"logs/{DATASET}/tune/mse.log"
    console = tmp_path / "killed.txt"
    with open(console, "w") as stream:
        proc = subprocess.Popen(snakemake_command(tmp_path, configfile, target),
                                stdout=stream, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text() if log.exists() else ""
            if text.count("epoch") >= 15:  # well inside the trials
                tuner = _train_process(proc.pid, "tune.py")
                if tuner is not None:
                    tuner.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.05)
        else:
            pytest.fail(f"tuning was never caught running:\n{console.read_text()[-3000:]}")
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert not best.exists() and not trials.exists()  # nothing half-written
    succeeded(snakemake(tmp_path, configfile, target))
    first = trials.read_text()
    succeeded(snakemake(tmp_path, configfile, target, "--forcerun", "tune"))
    assert trials.read_text() == first  # the restart is the uninterrupted run
