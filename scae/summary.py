"""Tables that answer "which loss?": one row per run, baselines beside the autoencoders."""

from __future__ import annotations

import pandas as pd

#: Columns shown first in the summary: the reconstruction metrics the question is about.
LEADING_METRICS = ["cosine_mean", "cosine_median", "centred_cosine_mean", "pearson_mean", "mse"]


def wide_summary(tidy: pd.DataFrame) -> pd.DataFrame:
    """Pivot tidy (dataset, model, kind, seed, metric, value) rows to one row per run.

    Baselines (seed missing) come last; columns start with :data:`LEADING_METRICS`.
    """
    keys = ["dataset", "kind", "model", "seed"]
    # Baselines have no seed; a placeholder keeps them through the pivot's groupby.
    rows = tidy.assign(seed=tidy["seed"].fillna(-1).astype(int))
    wide = rows.pivot_table(index=keys, columns="metric", values="value", aggfunc="first")
    wide = wide.reset_index()
    wide.columns.name = None
    wide["seed"] = wide["seed"].astype("Int64").mask(wide["seed"] < 0)
    leading = [m for m in LEADING_METRICS if m in wide]
    others = sorted(c for c in wide.columns if c not in keys and c not in leading)
    wide["_order"] = (wide["kind"] == "baseline").astype(int)
    wide = wide.sort_values(["dataset", "_order", "model", "seed"]).drop(columns="_order")
    return wide[keys + leading + others].reset_index(drop=True)
