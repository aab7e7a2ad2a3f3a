"""Snakemake entry point: the figures of one dataset's comparison."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
import anndata as ad
import pandas as pd

from scae import plots
from scae.io import atomic_path, rule_logging
from scae.outputs import EMBEDDING_KEY

sm = snakemake  # noqa: F821


def run_name(path: str) -> tuple[str, str]:
    """('nb', 'seed0') from results/<dataset>/<kind>/nb/seed0.<ext>."""
    parts = Path(path).parts
    return parts[-2], parts[-1].split(".")[0]


with rule_logging(sm.log[0]):
    tidy = pd.read_csv(sm.input.tidy, sep="\t")
    per_cell = {}
    for path in sm.input.per_cell:
        model, run = run_name(path)
        name = f"baseline_{run}" if model == "baseline" else model
        per_cell.setdefault(name, []).append(pd.read_csv(path, sep="\t"))
    per_cell = {name: pd.concat(tables) for name, tables in per_cell.items()}
    histories = {
        (Path(p).parts[-3], int(Path(p).parts[-2].removeprefix("seed"))): pd.read_csv(p, sep="\t")
        for p in sm.input.histories
    }
    embeddings, labels = {}, None
    for path in sm.input.embeddings:
        run = ad.read_h5ad(path)
        model, name = run_name(path)
        embeddings[f"baseline_{name}" if model == "baseline" else model] = run.obsm[EMBEDDING_KEY]
        if sm.params.label_key in run.obs:
            labels = run.obs[sm.params.label_key]
    figures = [
        (sm.output.cosine, lambda p: plots.cosine_distributions(per_cell, p)),
        (sm.output.heatmap, lambda p: plots.metric_heatmap(tidy, p)),
        (sm.output.curves, lambda p: plots.training_curves(histories, p)),
        (sm.output.umap, lambda p: plots.embeddings_umap(embeddings, labels, p)),
    ]
    for output, draw in figures:
        with atomic_path(output) as tmp:
            draw(tmp)
