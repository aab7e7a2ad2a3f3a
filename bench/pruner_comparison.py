"""Does the search pick good end points? tune.pruner median vs endpoint (vs none) on pbmc3k.

    python bench/pruner_comparison.py > bench/results/pruner_comparison.md \\
        2> bench/results/pruner_comparison.log      # ~20-40 min on one core

For each loss (default mse_cosine and cosine) and pruner it runs :func:`scae.train.tune.tune` as the
workflow's tune job does - pbmc3k preprocessed as its preprocess job does, the model, train,
loss_params and tune settings of config/config.yaml, one torch thread, on the CPU - with
``n_trials`` 16 and ``max_epochs`` 300, and prints one Markdown row: the winning trial, its
validation score (the criterion) and val_centred_cosine at its best epoch, the trials pruned
and after which epochs, the trials the cap stopped while still improving, the epochs trained
and the wall time of the search.

The runs' trial sequences part after the first pruned trial (TPE learns from what it saw), so
a second table replays each pruner on the trials of the ``none`` run (every trial trained to
its end): which of those it would have stopped, whether it keeps the ``none`` run's winner,
and the epochs it saves. ``endpoint x2`` is the end-point pruner with ``warmup_factor=2``.

Per run, bench/results/pruner_comparison/{loss}_{pruner}.tsv holds the trials (tune's frame)
and {loss}_{pruner}_history.tsv every trial's epochs (val_loss, val_centred_cosine, ...).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
import torch
import yaml
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import scae.train.tune  # noqa: E402  (the checkout's package, after the path above)
from scae import Autoencoder  # noqa: E402
from scae.data.params import DatasetOptions, PreprocessParams  # noqa: E402
from scae.data.preprocess import preprocess_file  # noqa: E402
from scae.registry import needs_counts  # noqa: E402
from scae.sizes import SizeNeeds  # noqa: E402
from scae.train import keep_freed_memory  # noqa: E402
from scae.train.pruning import EndpointPruner  # noqa: E402
from scae.train.trainer import TrainParams  # noqa: E402
from scae.train.tune import CRITERIA, TuneParams  # noqa: E402

DATASET = "pbmc3k"
OUT = REPO / "bench" / "results" / "pruner_comparison"
logger = logging.getLogger("scae")


def preprocessed(config: dict):
    """pbmc3k as the workflow's preprocess job makes it (scripts/preprocess.py)."""
    spec = config["datasets"][DATASET]
    losses = config["losses"]
    clusters = (
        "cosine_embedding" in losses
        and config["loss_params"]["cosine_embedding"]["negative_sampling"] == "cluster"
    )
    latent = config["model"]["latent_dim"]
    return preprocess_file(
        REPO / spec["path"],
        PreprocessParams(**config["preprocess"] | spec.get("preprocess", {})),
        DatasetOptions(
            DATASET,
            spec["label_key"] or None,
            spec["mito_prefix"] or None,
            clusters=clusters,
            require_integers=needs_counts(losses),
            needs=SizeNeeds(
                latent_dim=max(latent if isinstance(latent, list) else [latent]),
                clusters=clusters,
            ),
        ),
        counts=spec["counts"],
        transpose=spec.get("transpose", False),
    )


def model_settings(config: dict) -> dict:
    """config['model'] at the reference rank, as the tune rule passes it."""
    settings = {k: v for k, v in config["model"].items() if k != "reference_rank"}
    latent = settings["latent_dim"]
    ranks = latent if isinstance(latent, list) else [latent]
    return settings | {
        "latent_dim": config["model"].get("reference_rank") or max(ranks),
        "hidden": tuple(settings["hidden"]),
    }


def recording_fit(fit, histories: list[list[dict]]):
    """``fit``, keeping each call's (trial's) epochs, pruned trials' too, in ``histories``."""

    def wrapped(*args, on_epoch, **kwargs):
        rows: list[dict] = []
        histories.append(rows)

        def record(row: dict) -> None:
            rows.append(row)
            on_epoch(row)

        return fit(*args, on_epoch=record, **kwargs)

    return wrapped


def reported(history: list[dict], column: str) -> dict[int, float]:
    """What tune() reports after each epoch: the criterion at the best-val-loss epoch so far."""
    values, best, score = {}, float("inf"), float("nan")
    for row in history:
        if row["val_loss"] < best:
            best, score = row["val_loss"], row[column]
        values[row["epoch"]] = score
    return values


def replay(
    curves: list[dict[int, float]],
    failed: list[bool],
    maximize: bool,
    pruner: optuna.pruners.BasePruner,
) -> list[int | None]:
    """The epoch after which ``pruner`` would have stopped each trial of a run that pruned
    nothing (None: it runs to its end, or failed as it did), the trials taken in order."""
    study = optuna.create_study(direction="maximize" if maximize else "minimize", pruner=pruner)
    stops = []
    for curve, fail in zip(curves, failed, strict=True):
        trial, stop = study.ask(), None
        for epoch, value in curve.items():
            trial.report(value, epoch)
            if not fail and trial.should_prune():
                stop = epoch
                break
        if fail:
            study.tell(trial, state=TrialState.FAIL)
        elif stop is None:
            study.tell(trial, curve[max(curve)])
        else:
            study.tell(trial, state=TrialState.PRUNED)
        stops.append(stop)
    return stops


def epochs_list(epochs) -> str:
    counts = Counter(int(e) for e in epochs)
    return ", ".join(f"{e}" + (f" (x{n})" if n > 1 else "") for e, n in sorted(counts.items()))


def run(adata, config: dict, loss: str, pruner: str, n_trials: int, max_epochs: int) -> dict:
    settings = model_settings(config)
    model = Autoencoder(adata, loss, config["loss_params"].get(loss, {}), **settings)
    train = TrainParams(
        **{k: v for k, v in config["train"].items() if k not in ("threads", "device")}
    )
    params = TuneParams.from_config(
        config["tune"] | {"n_trials": n_trials, "max_epochs": max_epochs, "pruner": pruner}
    )
    histories: list[list[dict]] = []
    fit = scae.train.tune.fit
    scae.train.tune.fit = recording_fit(fit, histories)
    try:
        started = time.perf_counter()
        trials, best = scae.train.tune.tune(model, train, params, device="cpu")
        seconds = time.perf_counter() - started
    finally:
        scae.train.tune.fit = fit
    OUT.mkdir(parents=True, exist_ok=True)
    trials.to_csv(OUT / f"{loss}_{pruner}.tsv", sep="\t", index=False)
    pd.concat([pd.DataFrame(rows).assign(trial=i) for i, rows in enumerate(histories)]).to_csv(
        OUT / f"{loss}_{pruner}_history.tsv", sep="\t", index=False
    )
    winner = trials.set_index("trial").loc[best["trial"]]
    history = pd.DataFrame(histories[best["trial"]]).set_index("epoch")
    pruned = trials["pruned_at"].dropna()
    column, maximize = CRITERIA[params.criterion]
    return {
        "loss": loss,
        "pruner": pruner,
        "trials": trials,
        "seconds": seconds,
        "curves": [reported(h, column) for h in histories],
        "maximize": maximize,
        "row": [
            loss,
            pruner,
            best["trial"],
            f"{winner['learning_rate']:.2e}",
            int(winner["batch_size"]),
            winner["hidden"],
            f"{winner['dropout']:.3f}",
            int(winner["best_epoch"]),
            f"{best['score']:.5f}",
            f"{history.loc[winner['best_epoch'], 'val_centred_cosine']:.4f}",
            f"{len(pruned)}" + (f": {epochs_list(pruned)}" if len(pruned) else ""),
            int(trials["converged"].eq(False).sum()),
            int(trials["epochs"].sum()),
            f"{seconds / 60:.1f}",
        ],
    }


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", default=["mse_cosine", "cosine"])
    parser.add_argument("--pruners", nargs="+", default=["median", "endpoint", "none"])
    parser.add_argument("--n-trials", type=int, default=16)
    parser.add_argument("--max-epochs", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # the per-epoch lines would drown the per-trial ones (the history files keep the epochs)
    logger.addFilter(lambda record: not record.getMessage().startswith("epoch"))
    torch.set_num_threads(1)
    keep_freed_memory()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    adata = preprocessed(config)
    Autoencoder.setup_anndata(
        adata, layer="counts", labels_key=config["datasets"][DATASET]["label_key"] or None
    )
    print(
        f"# tune.pruner on {DATASET} ({adata.n_obs} cells x {adata.n_vars} genes): "
        f"{args.n_trials} trials, tune.max_epochs {args.max_epochs}, criterion "
        f"{config['tune']['criterion']}, train.patience {config['train']['patience']}, "
        "1 torch thread, CPU\n",
        flush=True,
    )
    header = [
        "loss",
        "pruner",
        "winner",
        "learning_rate",
        "batch_size",
        "hidden",
        "dropout",
        "best epoch",
        "val score (criterion)",
        "val_centred_cosine",
        "pruned: after epoch",
        "capped still improving",
        "epochs trained",
        "wall (min)",
    ]
    print(markdown(header, []), flush=True)
    runs = []
    for loss in args.losses:
        for pruner in args.pruners:
            result = run(adata, config, loss, pruner, args.n_trials, args.max_epochs)
            runs.append(result)
            print("| " + " | ".join(map(str, result["row"])) + " |", flush=True)
            logger.info("%s / %s trials:\n%s", loss, pruner, result["trials"].to_string())
    rules = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=5),
        "endpoint": EndpointPruner,
        "endpoint x2": lambda: EndpointPruner(2.0),
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the replays' trials
    rows = []
    for result in (r for r in runs if r["pruner"] == "none"):
        curves, maximize = result["curves"], result["maximize"]
        failed = (result["trials"]["state"] == "fail").tolist()
        finals = pd.Series(
            [c[max(c)] for c, fail in zip(curves, failed) if not fail],
            index=[i for i, fail in enumerate(failed) if not fail],
        )
        order = finals.sort_values(ascending=not maximize).index.tolist()
        total = sum(len(c) for c in curves)
        for name, make in rules.items():
            stops = replay(curves, failed, maximize, make())
            kept = [i for i in order if stops[i] is None]
            best_kept = kept[0]
            trained = sum(len(c) if stop is None else stop for c, stop in zip(curves, stops))
            stopped = [
                f"{i}@{stop} (rank {order.index(i) + 1})"
                for i, stop in enumerate(stops)
                if stop is not None
            ]
            rows.append(
                [
                    result["loss"],
                    name,
                    len(stopped),
                    ", ".join(stopped) or "-",
                    f"{order[0]}: {'kept' if order[0] in kept else 'PRUNED'}",
                    (
                        f"{best_kept} (rank {order.index(best_kept) + 1}, "
                        f"{finals[best_kept]:.5f} vs {finals[order[0]]:.5f})"
                    ),
                    f"{1 - trained / total:.0%}",
                ]
            )
    if rows:
        print("\n## Replayed on the trials of the `none` run (each trained to its end)\n")
        print(
            "trial@epoch it would be stopped after, and that trial's rank by end-point score "
            "among the run's trials (1 = best).\n"
        )
        print(
            markdown(
                [
                    "loss",
                    "rule",
                    "stopped",
                    "trial@epoch (end-point rank)",
                    "none's winner",
                    "best trial kept",
                    "epochs saved",
                ],
                rows,
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
