"""Compare one dataset's results from two runs of the workflow (before and after a change).

``python bench/compare_runs.py BEFORE_DIR AFTER_DIR [--dataset pbmc3k]`` prints which of the
result tables are byte-identical, the largest difference among the baselines, and per rank ×
loss the primary metric's mean ± sd over seeds before and after with Welch's t-test (and its
Bonferroni correction over those tests): a change that only redraws random numbers (new
dropout masks, say) should leave every loss inside its seed noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

TABLES = ("summary.tsv", "metrics.tsv", "comparisons.tsv", "ranks.tsv")


def loss_table(before: pd.DataFrame, after: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per rank × loss: ``metric``'s mean and sd over seeds in each run, the difference,
    Welch's p and its Bonferroni correction over the rank × loss tests."""
    runs = [s[s.kind == "autoencoder"].groupby(["rank", "model"])[metric] for s in (before, after)]
    rows = []
    for key, x in runs[0]:
        y = runs[1].get_group(key)
        rows.append(
            {
                "rank": int(key[0]),
                "loss": key[1],
                "before": f"{x.mean():.4f} ± {x.std():.4f}",
                "after": f"{y.mean():.4f} ± {y.std():.4f}",
                "difference": y.mean() - x.mean(),
                "welch_p": stats.ttest_ind(x, y, equal_var=False).pvalue,
            }
        )
    table = pd.DataFrame(rows)
    table["bonferroni_p"] = (table.welch_p * len(table)).clip(upper=1.0)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="workflow directory of the first run")
    parser.add_argument("after", type=Path, help="workflow directory of the second run")
    parser.add_argument("--dataset", default="pbmc3k")
    parser.add_argument("--metric", default="centred_cosine_mean")
    args = parser.parse_args()
    results = [run / "results" / args.dataset for run in (args.before, args.after)]
    for table in TABLES:
        same = (results[0] / table).read_bytes() == (results[1] / table).read_bytes()
        print(f"{table}: {'byte-identical' if same else 'differs'}")
    before, after = (pd.read_csv(r / "summary.tsv", sep="\t") for r in results)
    baselines = [
        s[s.kind == "baseline"].set_index(["model", "rank"]).select_dtypes("number")
        for s in (before, after)
    ]
    largest = np.nanmax(np.abs(baselines[0] - baselines[1]).to_numpy())
    print(f"baselines, largest absolute difference: {largest:.3g}")
    print(loss_table(before, after, args.metric).to_string(index=False, float_format="%.4f"))


if __name__ == "__main__":
    main()
