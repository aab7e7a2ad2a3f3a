"""Tuning (scae.train.tune) and convergence: validation cells only, the same budget for every loss,
reproducible trials, a pruner that judges end points, clean restarts, and final runs that
stop by patience."""

import re
import signal
import subprocess
import time
from dataclasses import replace

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.trial import TrialState, create_trial

import scae
from scae.evaluation.summary import convergence, read_histories
from scae.module.losses import LOSSES
from scae.train.pruning import EndpointPruner
from scae.train.trainer import TrainParams
from scae.train.tune import SearchSpace, TuneParams, tune

from .conftest import REPO, pbmc_subset
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
    pre = scae.preprocess(
        pbmc_subset(400), scae.PreprocessParams(n_top_genes=150), label_key="cell_type"
    )
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


def test_the_final_run_with_the_winning_settings_and_seed_is_the_winning_trial(
    adata, tmp_path, monkeypatch
):
    """What lets the workflow's training job resume best_run.pt instead of training again."""
    import scae.train.trainer as train_module

    best_run = tmp_path / "best_run.pt"
    model = scae.Autoencoder(adata, "pearson", hidden=(32,), latent_dim=4)
    trials, best = tune(model, TRAIN, BUDGET, device="cpu", best_run=best_run)
    assert best_run.exists() and best["trial"] > 0  # the winner is not just the configured point

    def final_run(**kwargs):
        final = scae.Autoencoder(
            adata,
            "pearson",
            latent_dim=4,
            hidden=tuple(best["model"]["hidden"]),
            dropout=best["model"]["dropout"],
        )
        settings = {"max_epochs": BUDGET.max_epochs, "patience": TRAIN.patience, **best["train"]}
        return final.train(**settings, device="cpu", **kwargs)

    straight = final_run(seed=BUDGET.seed)  # trained from scratch, as the workflow did before
    monkeypatch.setattr(train_module, "train_epoch", _no_training)
    reused = final_run(seed=BUDGET.seed, resume_from=best_run)
    pd.testing.assert_frame_equal(
        reused.history.drop(columns="seconds"), straight.history.drop(columns="seconds")
    )
    assert reused.best_epoch == straight.best_epoch
    winner = trials.set_index("trial").loc[best["trial"]]
    assert (len(reused.history), reused.best_epoch) == (winner["epochs"], winner["best_epoch"])
    for key, value in straight.module.state_dict().items():
        assert torch.equal(value, reused.module.state_dict()[key]), key
    with pytest.raises(AssertionError, match="an epoch was trained"):
        final_run(seed=BUDGET.seed + 1, resume_from=best_run)  # another seed is another run


def _no_training(*args, **kwargs):
    raise AssertionError("an epoch was trained")


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


def test_tune_params_defaults_are_the_schemas():
    tune_schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())["properties"]["tune"]

    def defaults(properties: dict) -> dict:
        return {k: v["default"] for k, v in properties.items() if "default" in v}

    config = defaults(tune_schema["properties"])
    config["space"] = defaults(tune_schema["properties"]["space"]["properties"])
    assert TuneParams.from_config(config) == TuneParams()
    assert TuneParams().max_epochs == 300 and TuneParams().pruner == "endpoint"


def test_settings_outside_the_space_start_no_trial(adata, caplog):
    with caplog.at_level("INFO", logger="scae"):
        trials, _ = _tune(adata, train=TrainParams(batch_size=8, max_epochs=100, patience=3))
    assert "lie outside tune.space" in caplog.text
    assert set(trials["batch_size"]) <= {64, 128}


# --------------------------------------------------------------------------------------------
# the end-point pruner, on hand-built studies: trials report best-so-far scores per epoch


def _curve(first: float, best: float, best_epoch: int, last_epoch: int) -> dict[int, float]:
    """Best-so-far scores falling linearly from ``first`` (epoch 1) to ``best`` (``best_epoch``)
    and flat after it, up to ``last_epoch``."""
    return {
        epoch: first + (best - first) * (min(epoch, best_epoch) - 1) / (best_epoch - 1)
        for epoch in range(1, last_epoch + 1)
    }


def _study(sign: int, *trials: tuple[TrialState, dict[int, float]], **pruner) -> optuna.Study:
    """A study of these finished trials, scores times ``sign`` (-1: larger is better)."""
    study = optuna.create_study(
        direction="minimize" if sign > 0 else "maximize", pruner=EndpointPruner(**pruner)
    )
    for state, curve in trials:
        values = {epoch: sign * value for epoch, value in curve.items()}
        study.add_trial(
            create_trial(
                state=state,
                intermediate_values=values,
                value=values[max(values)] if state == TrialState.COMPLETE else None,
            )
        )
    return study


def _pruned_after(study: optuna.Study, sign: int, scores: list[float]) -> int | None:
    """The epoch after which a new trial reporting ``scores`` (times ``sign``) is pruned."""
    trial = study.ask()
    for epoch, score in enumerate(scores, start=1):
        trial.report(sign * score, epoch)
        if trial.should_prune():
            return epoch
    return None


#: Minimise the scores as given, or maximise their negatives: the same decisions.
DIRECTIONS = pytest.mark.parametrize("sign", [1, -1], ids=["minimize", "maximize"])
#: The configured point: best at epoch 10 (the warm-up), stopped by patience at 13.
TRIAL_0 = (TrialState.COMPLETE, _curve(1.0, 0.5, best_epoch=10, last_epoch=13))


@DIRECTIONS
def test_no_trial_is_pruned_before_the_first_completed_trials_best_epoch(sign):
    hopeless = [5.0] * 40
    # unknown warm-up: nothing completed (a failed and a pruned trial do not set it)
    unknown = _study(
        sign,
        (TrialState.FAIL, {}),
        (TrialState.PRUNED, _curve(1.0, 0.9, best_epoch=3, last_epoch=3)),
    )
    assert _pruned_after(unknown, sign, hopeless) is None
    # the first completed trial sets it; a later one, best at epoch 4, does not
    later = (TrialState.COMPLETE, _curve(0.8, 0.3, best_epoch=4, last_epoch=7))
    assert _pruned_after(_study(sign, TRIAL_0, later), sign, hopeless) == 10
    assert _pruned_after(_study(sign, TRIAL_0, later, warmup_factor=1.5), sign, hopeless) == 15


@DIRECTIONS
def test_after_the_warmup_a_trial_behind_the_median_is_pruned_and_one_ahead_is_not(sign):
    slow = _curve(1.0, 0.1, best_epoch=25, last_epoch=28)  # 0.6625 by epoch 10, 0.625 by 11
    study = _study(
        sign,
        TRIAL_0,
        (TrialState.COMPLETE, slow),
        (TrialState.COMPLETE, _curve(1.0, 0.75, best_epoch=5, last_epoch=8)),
    )
    # by epoch 10 the earlier trials had reached 0.5, 0.6625 and 0.75: median 0.6625
    assert _pruned_after(study, sign, [0.9] * 9 + [0.67] * 30) == 10  # behind it
    assert _pruned_after(study, sign, [0.9] * 9 + [0.45] * 30) is None  # ahead, to the end
    # ahead at epoch 10 (not of the mean, 0.6375, nor of the end points' median, 0.5); behind
    # at 11, when the slow trial had reached 0.625
    assert _pruned_after(study, sign, [0.9] * 9 + [0.65] * 30) == 11


@DIRECTIONS
def test_a_trial_that_ended_early_counts_with_its_end_point_score(sign):
    slow = (TrialState.PRUNED, _curve(1.0, 0.9, best_epoch=30, last_epoch=30))
    fast = (TrialState.COMPLETE, _curve(0.4, 0.2, best_epoch=3, last_epoch=6))  # ended at 6
    scores = [0.6] * 40
    # by epoch 10: 0.5 (trial 0), 0.2 (fast, carried from epoch 6), 0.97 (slow): median 0.5
    assert _pruned_after(_study(sign, TRIAL_0, fast, slow), sign, scores) == 10
    # without the fast trial the median is that of 0.5 and the slow trial's score: never 0.6
    assert _pruned_after(_study(sign, TRIAL_0, slow), sign, scores) is None


def _reported(trials: pd.DataFrame, column: str) -> list:
    return [None if pd.isna(value) else int(value) for value in trials[column]]


def test_pruner_median_is_optunas_median_pruner_and_none_prunes_nothing(adata, monkeypatch):
    params = replace(BUDGET, n_trials=8, max_epochs=15)
    reports, report = [], optuna.trial.Trial.report

    def recording(trial, value, step):
        reports.append((trial.number, value, step))
        report(trial, value, step)

    monkeypatch.setattr(optuna.trial.Trial, "report", recording)
    trials, _ = _tune(adata, params=replace(params, pruner="median"))
    # the same reports, trial by trial, through the pruner tuning had before
    study = optuna.create_study(
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=5)
    )
    replayed = []
    for number in trials["trial"]:
        trial, pruned_at = study.ask(), None
        for _, value, step in [row for row in reports if row[0] == number]:
            report(trial, value, step)
            if trial.should_prune():
                pruned_at = step
                break
        study.tell(trial, state=TrialState.PRUNED) if pruned_at else study.tell(trial, value)
        replayed.append(pruned_at)
    assert _reported(trials, "pruned_at") == replayed
    assert 0 < sum(at is not None for at in replayed) < len(replayed)  # it prunes some here
    assert _reported(trials, "warmup") == [None] * 3 + [5] * 5
    nothing, _ = _tune(adata, params=replace(params, pruner="none"))
    assert (nothing["state"] == "complete").all() and nothing["pruned_at"].isna().all()
    assert nothing["warmup"].isna().all()


def test_trials_say_where_they_stopped_and_whether_they_converged(adata, caplog):
    with caplog.at_level("INFO", logger="scae"):
        trials, _ = _tune(adata, params=replace(BUDGET, n_trials=8, max_epochs=15))
    first = trials.iloc[0]
    assert first["state"] == "complete" and pd.isna(first["warmup"])  # nothing to judge by
    assert (trials["warmup"].iloc[1:] == first["best_epoch"]).all()
    pruned = trials[trials["state"] == "pruned"]
    assert (pruned["pruned_at"] >= pruned["warmup"]).all()
    assert (pruned["pruned_at"] == pruned["epochs"]).all()
    assert trials["pruned_at"].isna().tolist() == (trials["state"] != "pruned").tolist()
    # converged: False exactly for trials the 15-epoch cap stopped while still improving
    complete = trials[trials["state"] == "complete"]
    capped = (complete["epochs"] == 15) & (complete["epochs"] - complete["best_epoch"] < 3)
    assert complete["converged"].tolist() == (~capped).tolist()
    assert capped.any() and not capped.all()
    assert pruned["converged"].isna().all()
    assert f"stopped {len(pruned)} of 8 trials" in caplog.text
    assert f"{int(capped.sum())} trial(s) stopped at tune.max_epochs=15" in caplog.text
    assert "raise tune.max_epochs" in caplog.text


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
        model = torch.load(results / f"k8/models/{loss}/seed0/model.pt", weights_only=True)
        assert model["train_params"]["batch_size"] == best["train"]["batch_size"], loss
        assert model["model_params"]["hidden"] == best["model"]["hidden"], loss
        assert model["train_params"]["learning_rate"] == best["train"]["learning_rate"], loss
        # seed 0 at the reference rank is the winning trial: resumed from it, not retrained
        winner = trials.set_index("trial").loc[best["trial"]]
        history = pd.read_csv(results / f"k8/models/{loss}/seed0/history.tsv", sep="\t")
        assert (len(history), model["best_epoch"]) == (winner["epochs"], winner["best_epoch"])
        assert history["val_loss"].min() == pytest.approx(best["score"], rel=1e-12), loss
        # one job per seed trains both ranks (train.models_per_job: ranks)
        logs = small_run / f"logs/pbmc_small/train/{loss}"
        reused = re.compile(r"resumed from \S*tuning/\S+/best_run\.pt")
        seed0 = (logs / "seed0.log").read_text()
        assert "at ranks [2, 8], seed 0" in seed0
        assert len(reused.findall(seed0)) == 1, loss  # k8 resumed; k2 trains
        seed1 = (logs / "seed1.log").read_text()
        assert "resumed" not in seed1  # another seed trains
        assert "training 2 runs as one stacked model: rank 2 seed 1, rank 8 seed 1" in seed1
    # the outputs say what was used: metrics.tsv's setting_* rows and summary.md's table
    tidy = pd.read_csv(results / "metrics.tsv", sep="\t")
    mse = tidy[(tidy["model"] == "mse") & tidy["metric"].str.startswith("setting_")]
    best = yaml.safe_load((results / "tuning/mse/best.yaml").read_text())
    values = mse.groupby("metric")["value"].agg(["min", "max"])
    assert values.loc["setting_learning_rate", "min"] == pytest.approx(
        best["train"]["learning_rate"]
    )
    assert (values["min"] == values["max"]).all()  # every seed alike
    assert values.loc["setting_tuned", "min"] == 1
    assert values.loc["setting_hidden_1", "min"] == best["model"]["hidden"][0]
    markdown = (results / "summary.md").read_text()
    assert "Settings each loss trained with" in markdown
    settings = markdown[markdown.index("Settings each loss trained with") :]
    row = next(line for line in settings.splitlines() if line.startswith("| mse | "))
    assert row.endswith("| yes |") and f"{best['train']['batch_size']}" in row
    assert (results / "plots/tuning.png").stat().st_size > 10_000


@pytest.mark.workflow
def test_workflow_runs_converge_by_patience(small_run):
    """No final run stopped at max_epochs while its best epoch was among the last
    ``patience`` epochs (the MCV variant's runs included)."""
    config = yaml.safe_load((small_run / "config.yaml").read_text())
    histories = read_histories((small_run / "results").glob("*/k*/models/*/seed*/history.tsv"))
    # two seeds at each of two ranks, and MCV's one seed at the reference rank
    assert len(histories) == len(LOSSES) * (2 * 2 + 1)
    runs = convergence(histories, config["train"]["max_epochs"], config["train"]["patience"])
    assert runs["converged"].all(), runs[~runs["converged"]]


@pytest.mark.workflow
def test_killed_tuning_job_restarts_cleanly(tmp_path):
    config = small_config(tmp_path)
    config["tune"] = {
        "n_trials": 3,
        "max_epochs": 40,
        "space": {"batch_size": [8], "hidden": [[32]]},
    }  # slow trials
    configfile = write_config(tmp_path, config)
    target = f"{RESULTS}/tuning/mse/best.yaml"
    best = tmp_path / target
    trials = best.with_name("trials.tsv")
    log = tmp_path / f"logs/{DATASET}/tune/mse.log"
    console = tmp_path / "killed.txt"
    with open(console, "w") as stream:
        proc = subprocess.Popen(
            snakemake_command(tmp_path, configfile, target), stdout=stream, stderr=subprocess.STDOUT
        )
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
    assert not best.parent.exists() or not any(best.parent.iterdir())  # nothing half-written
    succeeded(snakemake(tmp_path, configfile, target))
    first = trials.read_text()
    succeeded(snakemake(tmp_path, configfile, target, "--forcerun", "tune"))
    assert trials.read_text() == first  # the restart is the uninterrupted run
