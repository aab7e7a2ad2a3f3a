"""Which training recipe takes the seed variance out of one rank-k autoencoder? An ablation.

    python bench/recipe_ablation.py [--tuned 60d2ff6] > bench/results/recipe_ablation.md \\
        2> bench/results/recipe_ablation.log       # ~1 h on one core for the defaults

For each dataset (default pbmc3k and zeisel2015, preprocessed as the workflow's preprocess job
does with the study's settings) it trains the ``mse`` autoencoder with that dataset's
study-tuned settings (``bench/study/<dataset>/tuning/mse/best.yaml``; the rest of
config/config.yaml's model and train sections) at each rank and seed, once per recipe of
:mod:`scae.train.recipes` (each alone, then the combinations given), every rank × seed of a
recipe as one stacked model (bitwise the models trained alone), one torch thread, on the CPU.
Held-out test cells are read only to score the trained models.

It prints, per dataset × rank × recipe: the test cells' centred cosine (the workflow's primary
metric; mean ± sd over seeds), the training cells' too (does the recipe fit less or
generalize more?), the difference of the seed mean from PCA-k on the same test cells (fit on
the training cells) with a 95 % t-interval over cells of the seed-averaged per-cell
difference, Welch's p for the recipe against no recipe over seeds, the epochs trained, and as a
labelled reference (k·seeds latent dimensions, never the answer) the seeds' averaged
reconstruction. Per-seed rows go to bench/results/recipe_ablation/<dataset>[_<tag>].tsv.

The reading rule, fixed before measuring: a recipe is worth switching on when its seed mean
beats no recipe's at both ranks of both datasets with Welch's p < 0.05 at least once and never
loses significantly; the issue's target is the simultaneous interval against PCA-k excluding
0 in the study, which this table only previews.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
import yaml
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from sections.common import machine_description  # noqa: E402  (bench/sections)

import scae  # noqa: E402  (the checkout's package, after the path above)
from scae.evaluation.baselines import fit_pca, pca_embed_and_reconstruct  # noqa: E402
from scae.evaluation.metrics import per_cell_metrics  # noqa: E402
from scae.module.losses import get_loss  # noqa: E402
from scae.module.network import ModelParams  # noqa: E402
from scae.train.cells import CellData  # noqa: E402
from scae.train.inference import reconstruction  # noqa: E402
from scae.train.stacked import fit_stacked  # noqa: E402
from scae.train.trainer import JOB_SETTINGS, TrainParams  # noqa: E402

OUT = REPO / "bench" / "results" / "recipe_ablation"
#: dataset → (file, mito prefix), as config/study.yaml reads them
DATASETS = {
    "pbmc3k": ("pbmc3k.h5ad", "MT-"),
    "zeisel2015": ("zeisel2015_cortex.h5ad", ""),
    "zheng17": ("zheng17_sorted_pbmc.h5ad", "MT-"),
}
#: name → settings (TrainParams', and MODEL_RECIPES' of ModelParams); the first is the
#: reference every other is tested against
RECIPES = {
    "none": {},
    "ema 0.99": {"ema_decay": 0.99},
    "thin 0.5": {"count_thinning": 0.5},
    "mask 0.2": {"input_masking": 0.2},
    # milder corruption, tried after the two above lowered the training cells' fit too
    "thin 0.1": {"count_thinning": 0.1},
    "mask 0.05": {"input_masking": 0.05},
    # the PCA-k path, frozen, with a learnt residual (model.pca_path)
    "pca path": {"pca_path": True},
}
#: the recipes that are architecture (model:) settings
MODEL_RECIPES = ("pca_path",)
logger = logging.getLogger("scae")


def settings(dataset: str, revision: str | None = None) -> tuple[dict, dict]:
    """The model and train settings of ``dataset``'s study-tuned ``mse`` (defaults elsewhere).

    ``best.yaml`` is read from the working tree, or as committed at git ``revision``.
    """
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    path = f"bench/study/{dataset}/tuning/mse/best.yaml"
    text = (
        (REPO / path).read_text()
        if revision is None
        else subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=REPO, check=True, capture_output=True,
            text=True,
        ).stdout
    )  # fmt: skip
    tuned = yaml.safe_load(text)
    model = {**config["model"], **tuned["model"]}
    train = {k: v for k, v in {**config["train"], **tuned["train"]}.items()}
    return model, {k: v for k, v in train.items() if k not in JOB_SETTINGS}


def preprocessed(dataset: str) -> ad.AnnData:
    """``dataset`` preprocessed with the workflow's defaults and the study's mito setting."""
    file, mito = DATASETS[dataset]
    raw = ad.read_h5ad(REPO / "resources" / "data" / file)
    return scae.preprocess(raw, label_key="cell_type", mito_prefix=mito, dataset=dataset)


def per_cell(adata: ad.AnnData, rows: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Centred cosine of each of ``rows`` against its reconstruction ``recon``."""
    mean = adata.var["train_mean"].to_numpy(np.float32)
    return per_cell_metrics(adata.X[rows], recon, mean).centred_cosine.to_numpy()


def run_recipe(
    adata: ad.AnnData, model: dict, train: dict, recipe: dict, ranks, seeds
) -> tuple[pd.DataFrame, dict]:
    """Train every rank × seed under ``recipe``; return per-seed rows and per-cell test scores."""
    data, spec = CellData(adata, model["input_scaling"]), get_loss("mse")
    params = {
        "n_genes": adata.n_vars,
        "hidden": tuple(model["hidden"]),
        "dropout": model["dropout"],
        "batch_norm": model["batch_norm"],
        "output": spec.output,
    }
    params |= {key: value for key, value in recipe.items() if key in MODEL_RECIPES}
    recipe = {key: value for key, value in recipe.items() if key not in MODEL_RECIPES}
    runs = [(ModelParams(**params, latent_dim=k), s) for k in ranks for s in seeds]
    started = time.process_time()
    results = fit_stacked(
        data, spec, spec.parameters(), runs, TrainParams(**{**train, **recipe}), torch.device("cpu")
    )
    cpu = time.process_time() - started
    test, training = data.rows("test"), data.rows("train")
    rows, cells = [], {}
    for (p, seed), result in zip(runs, results):
        recon = reconstruction(result.model, data, test, torch.device("cpu"))
        cells[(p.latent_dim, seed)] = (recon, per_cell(adata, test, recon))
        train_recon = reconstruction(result.model, data, training, torch.device("cpu"))
        rows.append(
            {
                "rank": p.latent_dim,
                "seed": seed,
                "test": cells[(p.latent_dim, seed)][1].mean(),
                "train": per_cell(adata, training, train_recon).mean(),
                "epochs": len(result.history),
                "best_epoch": result.best_epoch,
                "stopped_by": result.stopped_by,
                "cpu_s": cpu / len(runs),
            }
        )
    return pd.DataFrame(rows), cells


def pca_scores(adata: ad.AnnData, rank: int) -> tuple[np.ndarray, float]:
    """PCA-k fit on the training cells: per-cell test scores and the training cells' mean."""
    split = adata.obs["split"].to_numpy()
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    pca = fit_pca(adata.X[train], rank, seed=0)
    _, recon = pca_embed_and_reconstruct(pca, adata.X, test)
    _, train_recon = pca_embed_and_reconstruct(pca, adata.X, train)
    return per_cell(adata, test, recon), per_cell(adata, train, train_recon).mean()


def interval(diff: np.ndarray) -> str:
    """Mean of per-cell differences with a 95 % t-interval over cells."""
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
    return f"{diff.mean():+.4f} [{diff.mean() - half:+.4f}, {diff.mean() + half:+.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["pbmc3k", "zeisel2015"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[16, 32])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES)[:4], help="names in RECIPES")
    parser.add_argument(
        "--tuned",
        metavar="REV",
        help="read the study's best.yaml as committed at this git revision",
    )
    parser.add_argument(
        "--combine", nargs="*", default=[], help="extra recipes as a+b of RECIPES names"
    )
    parser.add_argument("--tag", help="per-seed rows to <dataset>_<tag>.tsv (another run's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(1)
    recipes = {name: RECIPES[name] for name in args.recipes}
    for combo in args.combine:
        recipes[combo] = {k: v for part in combo.split("+") for k, v in RECIPES[part].items()}
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"{machine_description()}; 1 torch thread; seeds {args.seeds}\n")
    for dataset in args.datasets:
        adata, (model, train) = preprocessed(dataset), settings(dataset, args.tuned)
        print(f"## {dataset}\n\nsettings: model {model} train {train}\n")
        print(
            "| k | recipe | test centred cosine (seeds) | train | vs PCA-k (cells, 95 %) | "
            "vs none (Welch p) | seeds averaged (reference) | epochs | CPU s/model |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        frames, reference = [], {}
        for name, recipe in recipes.items():
            frame, cells = run_recipe(adata, model, train, recipe, args.ranks, args.seeds)
            frame.insert(0, "recipe", name)
            frames.append(frame)
            for k in args.ranks:
                if k not in reference:
                    reference[k] = pca_scores(adata, k)
                pca_cells, pca_train = reference[k]
                mine = frame[frame["rank"] == k]
                per_cell_mean = np.mean([cells[(k, s)][1] for s in args.seeds], axis=0)
                averaged = per_cell(
                    adata,
                    np.flatnonzero(adata.obs["split"].to_numpy() == "test"),
                    np.mean([cells[(k, s)][0] for s in args.seeds], axis=0),
                ).mean()
                base = frames[0][frames[0]["rank"] == k].test
                versus = (
                    "-"
                    if name == "none"
                    else f"{mine.test.mean() - base.mean():+.4f} "
                    f"(p {stats.ttest_ind(mine.test, base, equal_var=False).pvalue:.3f})"
                )
                print(
                    f"| {k} | {name} | {mine.test.mean():.4f} ± {mine.test.std():.4f} | "
                    f"{mine.train.mean():.4f} (PCA {pca_train:.4f}) | "
                    f"{interval(per_cell_mean - pca_cells)} (PCA {pca_cells.mean():.4f}) | "
                    f"{versus} | {averaged:.4f} | {mine.epochs.mean():.0f} | "
                    f"{mine.cpu_s.mean():.1f} |",
                    flush=True,
                )
        name = f"{dataset}_{args.tag}" if args.tag else dataset
        pd.concat(frames).to_csv(OUT / f"{name}.tsv", sep="\t", index=False)
        print()


if __name__ == "__main__":
    main()
