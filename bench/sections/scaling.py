"""Scaling with the real workflow: its preprocess + train (1 epoch) on 10k / 100k / 1M
synthetic cells × 2000 genes, wall time and peak RSS from Snakemake's benchmark files; with
--atlas, the same at 1.3 M × 28 k cells and 2,000 UMIs/cell (10x's mouse brain shape)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .common import Report, read_benchmark, run_workflow, synthetic_h5ad

#: The shape of 10x's 1.3 M mouse brain cells: cells, genes, median UMIs per cell.
ATLAS = (1_306_127, 27_998, 2000.0)
#: Atlas-shaped reference rows (cells) the atlas row's cost per cell is compared with.
ATLAS_REFERENCE = 100_000
#: Memory targets of the atlas row: the preprocess job, and every job (the 24 GB machine).
ATLAS_PREPROCESS_GB, MACHINE_GB = 12, 24


def scaling_run(report: Report, workdir: Path, name: str, data: Path, n: int, label: str) -> dict:
    """The workflow's preprocess + train (one epoch; the train job also embeds every cell and
    reconstructs the test cells) on ``data``: rows in the report, and the numbers."""
    import yaml

    run_dir = workdir / f"scaling_{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = {
        "datasets": {
            name: {"path": str(data), "counts": "X", "label_key": "cell_type", "mito_prefix": ""}
        },
        "preprocess": {"min_genes": 50, "n_top_genes": 2000},
        "losses": ["mse"],
        "seeds": [0],
        "mcv": {"enabled": False},
        "tune": {"enabled": False},  # the final training job only
        # one thread per job, the workflow's default (and robust to a shared machine)
        "train": {"max_epochs": 1, "threads": 1},
    }
    configfile = run_dir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    target = f"results/{name}/k32/models/mse/seed0/model.pt"
    wall = run_workflow(run_dir, configfile, [target], cores=2)
    rules = {
        "preprocess": read_benchmark(run_dir / "benchmarks" / name / "preprocess.tsv"),
        "train": read_benchmark(
            run_dir / "benchmarks" / name / "k32" / "train" / "mse" / "seed0.tsv"
        ),
    }
    total = sum(r["s"] for r in rules.values())
    for rule, r in rules.items():
        report.add(
            "scaling",
            f"{label}: {rule} s / peak RSS GB",
            f"{r['s']:.1f} / {r['max_rss_mb'] / 1024:.2f}",
            f"< {MACHINE_GB} GB",
            r["max_rss_mb"] < MACHINE_GB * 1024,
        )
    report.add("scaling", f"{label}: preprocess + train, µs/cell", f"{total / n * 1e6:.0f}")
    shutil.rmtree(run_dir / "results", ignore_errors=True)  # GBs at 1M cells
    return {
        "cells": n,
        "snakemake_wall_s": wall,
        "per_cell_s": total / n,
        **{f"{rule}_{k}": v for rule, r in rules.items() for k, v in r.items()},
    }


def section_scaling(report: Report, args, workdir: Path) -> None:
    sizes = (
        args.sizes
        if args.sizes is not None
        else ([10_000, 30_000] if args.quick else [10_000, 100_000, 1_000_000])
    )
    details = {}
    for n in sizes:
        data = synthetic_h5ad(workdir / f"synthetic_{n}.h5ad", n)
        details[f"syn{n // 1000}k"] = scaling_run(
            report, workdir, f"syn{n // 1000}k", data, n, f"{n:>9,} cells"
        )
    per_cell = {d["cells"]: d["per_cell_s"] for d in details.values()}
    if len(sizes) > 1:
        big, ref = sizes[-1], sizes[-2]
        ratio = per_cell[big] / per_cell[ref]
        report.add(
            "scaling",
            f"cost per cell {big // 1000}k / {ref // 1000}k",
            f"{ratio:.2f}×",
            "≤ 1.5×",
            ratio <= 1.5,
        )
    if args.atlas:
        details["atlas"] = section_atlas(report, args, workdir, per_cell.get(ATLAS_REFERENCE))
    report.details["scaling"] = details


def section_atlas(report: Report, args, workdir: Path, per_cell_2000: float | None) -> dict:
    """The atlas row: preprocess + one epoch + embedding at the shape of 10x's 1.3 M mouse
    brain cells (``--quick``: 10k and 50k cells of that shape), beside a 100k-cell reference
    of the same shape; the cost per cell is compared with it, and with the 100k × 2000-gene
    row when that ran too."""
    import h5py

    n_atlas, n_genes, depth = ATLAS
    sizes = args.atlas_sizes or ([10_000, 50_000] if args.quick else [ATLAS_REFERENCE, n_atlas])
    runs = {}
    for n in sizes:
        data = synthetic_h5ad(
            workdir / f"synthetic_{n}x{n_genes}_d{depth:.0f}.h5ad", n, n_genes=n_genes, depth=depth
        )
        with h5py.File(data, "r") as f:
            nnz = f["X/data"].shape[0]
        report.add(
            "scaling",
            f"atlas {n:>9,} × {n_genes:,}: non-zeros, per cell",
            f"{nnz:.3g}, {nnz / n:,.0f}",
            note=f"{data.stat().st_size / 2**30:.1f} GB file",
        )
        run = scaling_run(
            report, workdir, f"atlas{n // 1000}k", data, n, f"atlas {n:>9,} × {n_genes:,}"
        )
        run["nnz"] = nnz
        runs[n] = run
    big, ref = sizes[-1], sizes[0]
    pre_gb = runs[big]["preprocess_max_rss_mb"] / 1024
    row_gb = max(runs[big]["preprocess_max_rss_mb"], runs[big]["train_max_rss_mb"]) / 1024
    report.add(
        "scaling",
        f"atlas {big:,}: preprocess peak RSS GB",
        f"{pre_gb:.2f}",
        f"≤ {ATLAS_PREPROCESS_GB} GB",
        pre_gb <= ATLAS_PREPROCESS_GB,
    )
    report.add(
        "scaling",
        f"atlas {big:,}: largest job of the row, peak RSS GB",
        f"{row_gb:.2f}",
        f"< {MACHINE_GB} GB",
        row_gb < MACHINE_GB,
    )
    report.add(
        "scaling",
        f"atlas {big:,}: preprocess + 1 epoch + embedding, wall s",
        f"{runs[big]['preprocess_s'] + runs[big]['train_s']:.0f}",
        note=f"snakemake wall {runs[big]['snakemake_wall_s']:.0f} s",
    )
    ratio = runs[big]["per_cell_s"] / runs[ref]["per_cell_s"]
    report.add(
        "scaling",
        f"atlas cost per cell {big // 1000}k / {ref // 1000}k (same shape)",
        f"{ratio:.2f}×",
        "≤ 1.5×",
        ratio <= 1.5,
    )
    if per_cell_2000:
        report.add(
            "scaling",
            f"atlas cost per cell {big // 1000}k / the 100k × 2000-gene row",
            f"{runs[big]['per_cell_s'] / per_cell_2000:.2f}×",
            note="~5× the non-zeros per cell of that row",
        )
    return {str(n): run for n, run in runs.items()}
