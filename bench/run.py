"""scae performance benchmark: one command, one table.

    python bench/run.py            # everything (about 25 minutes on 2 cores)
    python bench/run.py --quick    # a smaller version of every section (about 5 minutes)
    python bench/run.py --only throughput flops

Sections (see bench/README.md for what each measures and its acceptance target):

  throughput  our NB training vs scvi-tools SCVI, matched architecture, same data, alternating
  flops       our MSE training's model FLOP/s vs the torch 2048³ GEMM peak, same process
  scaling     the real workflow's preprocess + train (1 epoch) on 10k / 100k / 1M synthetic
              cells × 2000 genes: wall time and peak RSS from Snakemake's benchmark files;
              --atlas adds 1.3 M × 28 k cells at 2,000 UMIs/cell (10x's mouse brain shape)
  workflow    the default workflow (config/config.yaml) end to end with --cores 2
  profile     torch.profiler of one NB and one MSE training epoch at 1 and 2 threads: ms
              per step by phase (batch, forward, loss, backward, optimizer, sync) and op

Results: a table on stdout, bench/results/results.{tsv,md}, and per-section details there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"


@dataclass
class Row:
    section: str
    metric: str
    value: str
    target: str = ""
    passed: bool | None = None
    note: str = ""

    def verdict(self) -> str:
        return {True: "yes", False: "NO", None: ""}[self.passed]


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def add(self, *args, **kwargs) -> None:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        print(
            f"  {row.section:<11} {row.metric:<44} {row.value:>16}  {row.target:<12} "
            f"{row.verdict()}",
            flush=True,
        )

    def markdown(self) -> str:
        lines = ["| section | metric | value | target | met |", "|---|---|---|---|---|"]
        lines += [
            f"| {r.section} | {r.metric} | {r.value} | {r.target} | {r.verdict()} |"
            for r in self.rows
        ]
        return "\n".join(lines)

    def tsv(self) -> str:
        lines = ["section\tmetric\tvalue\ttarget\tmet\tnote"]
        lines += [
            f"{r.section}\t{r.metric}\t{r.value}\t{r.target}\t{r.verdict()}\t{r.note}"
            for r in self.rows
        ]
        return "\n".join(lines) + "\n"


# --- shared helpers ---------------------------------------------------------------------------


def synthetic_h5ad(
    path: Path, n_cells: int, seed: int = 0, n_genes: int = 2000, depth: float | None = None
) -> Path:
    """Seeded synthetic counts (scae.data.synthetic, written block by block), cached by file name;
    ``depth``: median UMIs per cell (default: the generator's, 550 over 2000 genes)."""
    from scae.data.synthetic import SyntheticParams, write_synthetic

    if not path.exists():
        started = time.perf_counter()
        shape = {"n_cells": n_cells, "n_genes": n_genes, "seed": seed}
        write_synthetic(
            path, SyntheticParams(**shape, **({"median_library": depth} if depth else {}))
        )
        print(
            f"  (generated {n_cells:,} × {n_genes:,} synthetic cells in "
            f"{time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    return path


def preprocessed_synthetic(n_cells: int, workdir: Path):
    """10k-style synthetic data preprocessed by scae (all 2000 genes kept)."""
    import anndata as ad

    from scae.data.params import PreprocessParams
    from scae.data.preprocess import preprocess

    raw = ad.read_h5ad(synthetic_h5ad(workdir / f"synthetic_{n_cells}.h5ad", n_cells))
    params = PreprocessParams(min_genes=0, min_cells=0, max_pct_mito=100.0, n_top_genes=raw.n_vars)
    return raw, preprocess(
        raw, params, dataset="synthetic", label_key="cell_type", mito_prefix=None
    )


def bench_model_params(n_genes: int, hidden, output: str):
    """The benchmark's autoencoder: latent 32, dropout 0.1, batch norm, θ per gene."""
    from scae.module.network import ModelParams

    return ModelParams(
        n_genes=n_genes,
        hidden=tuple(hidden),
        latent_dim=32,
        dropout=0.1,
        batch_norm=True,
        output=output,
        dispersion="gene",
    )


def fit_epoch_seconds(
    data,
    loss: str,
    hidden,
    batch_size: int,
    epochs: int,
    seed: int = 0,
    validation: bool = True,
    device: str = "cpu",
) -> list[float]:
    """Train with scae.train.fit on ``device``; the seconds of every epoch (see
    ``_epoch_rates``).

    An epoch's time is the trainer's own (history ``seconds``): the minibatch loop and the
    validation pass it runs after every epoch. ``validation=False`` replaces that pass by a
    no-op, to time the training loop alone (as scvi-tools trains by default).
    """
    import torch

    import scae.train.trainer
    from scae.module.losses import get_loss
    from scae.train.trainer import TrainParams, fit

    if not validation:
        real = scae.train.trainer.evaluate_split
        scae.train.trainer.evaluate_split = lambda *args, **kwargs: {
            "val_loss": 0.0,
            "val_cosine": 0.0,
        }
        try:
            return fit_epoch_seconds(data, loss, hidden, batch_size, epochs, seed, device=device)
        finally:
            scae.train.trainer.evaluate_split = real

    spec = get_loss(loss)
    params = bench_model_params(data.n_genes, hidden, spec.output)
    train = TrainParams(
        batch_size=batch_size, learning_rate=1e-3, max_epochs=epochs, patience=epochs + 1
    )
    result = fit(data, spec, {}, params, train, seed=seed, device=torch.device(device))
    return list(result.history["seconds"])


def layer_sizes(n_genes: int, hidden, latent: int) -> list[int]:
    """Widths of the workflow's autoencoder: encoder, linear bottleneck, mirrored decoder."""
    return [n_genes, *hidden, latent, *reversed(hidden), n_genes]


def model_flops_per_cell(n_genes: int, hidden, latent: int) -> float:
    """Training FLOPs per cell in the Linear layers: 6 × weights (forward, weight gradient,
    input gradient: the usual model-FLOPs count, as the issue's anchor). Training never
    computes the first layer's input gradient, so this slightly flatters every rate alike."""
    sizes = layer_sizes(n_genes, hidden, latent)
    return float(sum(6 * a * b for a, b in zip(sizes[:-1], sizes[1:])))


def gemm_peak(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """Best-of-``repeats`` float32 GFLOP/s of an n×n×n torch.mm on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


# --- 1. throughput vs scvi-tools -------------------------------------------------------------


def scvi_cells_per_second(
    raw, batch_size: int, epochs: int, seed: int = 0, accelerator: str = "cpu"
):
    """scvi-tools SCVI at the matched architecture: (training cells, seconds of each epoch).
    No validation pass (scvi-tools' default), unlike ours. ``accelerator``: Lightning's
    (``"cpu"`` or ``"gpu"``)."""
    import lightning.pytorch as pl
    import scvi

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, module):
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds.append(time.perf_counter() - self._start)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    scvi.settings.seed = seed
    adata = raw.copy()
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(
        adata,
        n_hidden=128,
        n_latent=32,
        n_layers=2,
        dropout_rate=0.1,
        gene_likelihood="nb",
        dispersion="gene",
    )
    timer = EpochTimer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            max_epochs=epochs,
            batch_size=batch_size,
            accelerator=accelerator,
            devices=1,
            train_size=0.9,
            early_stopping=False,
            enable_progress_bar=False,
            logger=False,
            callbacks=[timer],
            enable_model_summary=False,
        )
    return len(model.train_indices), timer.seconds


#: scae / scvi-tools cells/s to reach, by torch threads (fixed before measuring).
THROUGHPUT_TARGETS = {2: 3.0, 1: 4.0}


def section_throughput(report: Report, args, workdir: Path) -> None:
    import torch

    from scae.module._kernels import library_path
    from scae.train.cells import CellData

    rounds, epochs = (2 if args.quick else 5), (3 if args.quick else 4)
    raw, pre = preprocessed_synthetic(10_000, workdir)
    raw = raw[:, pre.var_names].copy()  # the same genes for both (HVG drops all-zero ones)
    data = CellData(pre, "none")
    try:
        import scvi  # noqa: F401

        have_scvi = True
    except ImportError:
        have_scvi = False
        print("  scvi-tools is not installed (pip install -e '.[bench]'); measuring ours only")
    n_train = len(data.rows("train"))
    report.details["throughput"] = {
        "data": f"{pre.n_obs} cells × {pre.n_vars} genes",
        "epochs_per_run": epochs,
        "rounds": rounds,
    }
    for threads in args.threads:
        # per-epoch cells/s, epoch 1 of every run left out
        ours, loop, torch_adam, theirs = [], [], [], []
        for r in range(rounds):  # alternate, so all see the same machine load
            torch.set_num_threads(threads)
            ours += _epoch_rates(
                n_train, fit_epoch_seconds(data, "nb", (128, 128), 256, epochs, seed=r)
            )
            loop += _epoch_rates(
                n_train,
                fit_epoch_seconds(data, "nb", (128, 128), 256, epochs, seed=r, validation=False),
            )
            with library_path("adam"):
                torch_adam += _epoch_rates(
                    n_train,
                    fit_epoch_seconds(
                        data, "nb", (128, 128), 256, epochs, seed=r, validation=False
                    ),
                )
            if have_scvi:
                torch.set_num_threads(threads)
                n_scvi, seconds = scvi_cells_per_second(raw, 256, epochs, seed=r)
                theirs += _epoch_rates(n_scvi, seconds)
            print(
                f"    {threads} thr., round {r + 1}: medians so far: ours "
                f"{statistics.median(ours):,.0f} cells/s, training loop only "
                f"{statistics.median(loop):,.0f}"
                + (f", scvi-tools {statistics.median(theirs):,.0f}" if have_scvi else ""),
                flush=True,
            )
        report.details["throughput"][f"{threads}_threads"] = {
            "ours": ours,
            "ours_loop": loop,
            "ours_loop_torch_adam": torch_adam,
            "scvi": theirs,
        }
        section = f"throughput {threads}t"
        if threads == args.threads[0]:
            density = pre.X.nnz / (pre.n_obs * pre.n_vars)
            report.add(
                section,
                "data: synthetic cells × genes, density",
                f"{pre.n_obs:,} × {pre.n_vars:,}, {density:.1%}",
            )
        report.add(
            section,
            "scae NB, cells/s, epoch incl. its validation",
            f"{statistics.median(ours):,.0f}",
            note=f"best epoch {max(ours):,.0f}",
        )
        report.add(
            section,
            "scae NB, cells/s, training loop only",
            f"{statistics.median(loop):,.0f}",
            note=f"best epoch {max(loop):,.0f}",
        )
        gain = statistics.median(loop) / statistics.median(torch_adam) - 1
        report.add(
            section,
            "FusedAdam vs torch.optim.Adam(fused=True), loop",
            f"{gain:+.1%}",
            note=f"torch's: {statistics.median(torch_adam):,.0f} cells/s",
        )
        if have_scvi:
            report.add(
                section,
                "scvi-tools SCVI NB, cells/s (trains without validation)",
                f"{statistics.median(theirs):,.0f}",
                note=f"best epoch {max(theirs):,.0f}",
            )
            ratio = statistics.median(loop) / statistics.median(theirs)
            target = THROUGHPUT_TARGETS.get(threads, 3.0)
            report.add(
                section,
                "ratio scae / scvi-tools, like for like",
                f"{ratio:.2f}×",
                f"≥ {target:g}×",
                ratio >= target,
            )
            with_val = statistics.median(ours) / statistics.median(theirs)
            report.add(section, "ratio counting scae's validation pass", f"{with_val:.2f}×")
    start = optimizer_start_seconds()
    report.details["throughput"]["optimizer_start_s"] = start
    report.add(
        "throughput",
        "first optimizer in a fresh process, s: FusedAdam | torch",
        " | ".join(f"{v:.2f}" for v in start.values()),
        note="paid once per training job",
    )


def optimizer_start_seconds(repeats: int = 5) -> dict[str, float]:
    """Median seconds a fresh process spends building its first optimizer, per kind: torch's
    constructor imports torch._dynamo once per process, i.e. once per training job."""
    code = (
        "import time, torch; from scae.module._kernels import FusedAdam; "
        "p = [torch.zeros(8, requires_grad=True)]; t = time.perf_counter(); "
        "{} ; print(time.perf_counter() - t)"
    )
    kinds = {
        "FusedAdam": "FusedAdam(p, lr=1e-3)",
        "torch.optim.Adam(fused=True)": "torch.optim.Adam(p, lr=1e-3, fused=True)",
    }
    seconds = {kind: [] for kind in kinds}
    for _ in range(repeats):
        for kind, build in kinds.items():
            out = subprocess.run(
                [sys.executable, "-c", code.format(build)],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            seconds[kind].append(float(out.split()[-1]))
    return {kind: statistics.median(values) for kind, values in seconds.items()}


def _epoch_rates(n_cells: int, seconds: list[float]) -> list[float]:
    return [n_cells / s for s in (seconds[1:] or seconds)]


# --- 2. FLOP/s of MSE training ---------------------------------------------------------------


def linear_layers_gflops(
    n_genes: int, hidden, latent: int, batch: int, repeats: int = 30
) -> list[float]:
    """Model GFLOP/s of the same Linear layers alone (forward and backward, nothing else), one
    rate per repeat: the ceiling these GEMM shapes allow, without batch norm, dropout, loss or
    optimizer."""
    import torch

    sizes = layer_sizes(n_genes, hidden, latent)
    weights = [torch.randn(b, a, requires_grad=True) for a, b in zip(sizes[:-1], sizes[1:])]
    x = torch.randn(batch, n_genes)

    def step() -> None:
        h = x
        for weight in weights:
            h = h @ weight.t()
        h.backward(torch.ones_like(h))

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return [batch * model_flops_per_cell(n_genes, hidden, latent) / t / 1e9 for t in times]


def anchor_cells_per_second(
    data, hidden, latent: int, batch_size: int, epochs: int, seed: int = 0
) -> list[float]:
    """The issue's anchor, in this process: a plain dense torch MSE autoencoder with the same
    Linear layers (ReLU between them; no batch norm, dropout or validation), ``nn.MSELoss``
    and ``torch.optim.Adam``, the training cells held as one dense tensor. Cells/s of epochs
    2.. ."""
    import torch
    from torch import nn

    x = torch.from_numpy(data.x[data.rows("train")].toarray())
    sizes = layer_sizes(data.n_genes, hidden, latent)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers.append(nn.Linear(n_in, n_out))
        if n_out not in (latent, data.n_genes):  # linear bottleneck and output
            layers.append(nn.ReLU())
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(*layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.MSELoss()
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            batch = x[idx]
            loss = loss_fn(model(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - started)
    return _epoch_rates(len(x), seconds)


#: Minibatch sizes of the flops section: the workflow's default and two GEMM-bound ones.
BATCH_SIZES = (128, 512, 1024)


def section_flops(report: Report, args, workdir: Path) -> None:
    import torch

    from scae.train.cells import CellData

    epochs = 3 if args.quick else 5
    _, pre = preprocessed_synthetic(10_000, workdir)
    data = CellData(pre, "none")
    hidden = (256, 128)  # the workflow's default model
    flops = model_flops_per_cell(data.n_genes, hidden, 32)
    # A whole epoch includes fit's validation pass, forward only: 2 × weights per val cell.
    n_train, n_val = len(data.rows("train")), len(data.rows("val"))
    per_train_cell = flops + flops / 3 * n_val / n_train
    report.details["flops"] = {"flops_per_cell": flops, "flops_per_train_cell": per_train_cell}
    n_genes = data.n_genes

    def scae_rates(batch: int, validation: bool) -> list[float]:
        seconds = fit_epoch_seconds(data, "mse", hidden, batch, epochs, validation=validation)
        cell_flops = per_train_cell if validation else flops
        return [rate * cell_flops / 1e9 for rate in _epoch_rates(n_train, seconds)]

    # Model GFLOP/s of each contender, one rate per epoch (per repeat for the bare layers).
    measurements = {
        "scae": lambda batch: scae_rates(batch, validation=False),
        "scae_validated": lambda batch: scae_rates(batch, validation=True),
        "anchor": lambda batch: [
            rate * flops / 1e9 for rate in anchor_cells_per_second(data, hidden, 32, batch, epochs)
        ],
        "linear_only": lambda batch: linear_layers_gflops(n_genes, hidden, 32, batch),
    }
    for threads in args.threads:
        section = f"flops {threads}t"
        torch.set_num_threads(threads)
        peaks: list[float] = []
        # Per batch size and contender: GFLOP/s of every epoch, and the same as fractions of
        # the peak sampled beside it.
        rates = {batch: {name: [] for name in measurements} for batch in BATCH_SIZES}
        fractions = {batch: {name: [] for name in measurements} for batch in BATCH_SIZES}
        for _ in range(1 if args.quick else 5):  # rounds: all sizes see the same machine
            for batch in BATCH_SIZES:
                # The peak drifts by ±10 % within minutes on a shared machine, so it is
                # sampled right before and after every measurement, and each measurement is
                # also set against the higher of its two neighbours.
                peaks.append(gemm_peak(threads))
                for name, measure in measurements.items():
                    measured = measure(batch)
                    peaks.append(gemm_peak(threads))
                    rates[batch][name] += measured
                    fractions[batch][name] += [r / max(peaks[-2:]) for r in measured]
        peak = max(peaks)
        report.details["flops"][f"{threads}_threads"] = {
            "gemm_gflops": peaks,
            "gflops": rates,
            "fraction_of_peak_beside": fractions,
        }
        report.add(
            section,
            f"torch 2048³ GEMM peak, GFLOP/s: best of {len(peaks)} samples (median, lowest)",
            f"{peak:.0f} ({statistics.median(peaks):.0f}, {min(peaks):.0f})",
        )
        for batch in BATCH_SIZES:
            best = {name: max(r) / peak for name, r in rates[batch].items()}
            beside = {name: statistics.median(f) for name, f in fractions[batch].items()}
            default = " (workflow default)" if batch == 128 else ""
            report.add(
                section,
                f"batch {batch}{default}: scae MSE training loop, cells/s (best epoch, median)",
                f"{max(rates[batch]['scae']) * 1e9 / flops:,.0f}, "
                f"{statistics.median(rates[batch]['scae']) * 1e9 / flops:,.0f}",
            )
            report.add(
                section,
                "  model FLOP/s (6 × weights / cell), % of peak: best epoch vs best GEMM",
                f"{best['scae']:.1%}",
                "≥ 60 %",
                best["scae"] >= 0.6,
            )
            report.add(
                section,
                "  the same: median epoch vs the GEMM peak beside it",
                f"{beside['scae']:.0%}",
            )
            report.add(
                section,
                "  whole epochs incl. fit's validation pass, % of peak (best, median)",
                f"{best['scae_validated']:.0%}, {beside['scae_validated']:.0%}",
            )
            report.add(
                section,
                "  plain torch MSE autoencoder (anchor), % of peak (best, median)",
                f"{best['anchor']:.0%}, {beside['anchor']:.0%}",
            )
            report.add(
                section,
                "  ratio scae / anchor, model FLOP/s (best, median)",
                f"{best['scae'] / best['anchor']:.2f}×, {beside['scae'] / beside['anchor']:.2f}×",
            )
            report.add(
                section,
                "  the Linear layers alone, % of peak (best, median; ceiling)",
                f"{best['linear_only']:.0%}, {beside['linear_only']:.0%}",
            )


# --- 3. scaling with the real workflow -------------------------------------------------------


def read_benchmark(path: Path) -> dict:
    import pandas as pd

    row = pd.read_csv(path, sep="\t").iloc[-1]
    return {
        "s": float(row["s"]),
        "cpu_s": float(row["cpu_time"]),
        "max_rss_mb": float(row["max_rss"]),
    }


def run_workflow(
    workdir: Path, configfile: Path, targets: list[str], cores: int = 2, timeout: int | None = None
) -> float:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--cores",
        str(cores),
        *targets,
    ]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return seconds


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


# --- 4. the default workflow end to end -------------------------------------------------------


def section_workflow(report: Report, args, workdir: Path) -> None:
    run_dir = workdir / "workflow"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shutil.copytree(REPO / "config", run_dir / "config")
    (run_dir / "resources").symlink_to(REPO / "resources")
    wall = run_workflow(run_dir, run_dir / "config" / "config.yaml", [], cores=2)
    by_rule: dict[str, list[dict]] = {}
    for path in (run_dir / "benchmarks").rglob("*.tsv"):
        rule = path.relative_to(run_dir / "benchmarks").parts[1].removesuffix(".tsv")
        by_rule.setdefault(rule, []).append(read_benchmark(path))
    totals = {
        rule: {
            "jobs": len(jobs),
            "wall_s": sum(j["s"] for j in jobs),
            "cpu_s": sum(j["cpu_s"] for j in jobs),
        }
        for rule, jobs in by_rule.items()
    }
    report.details["workflow"] = {"wall_s": wall, "rules": totals}
    report.add(
        "workflow",
        "default workflow, snakemake --cores 2, minutes",
        f"{wall / 60:.1f}",
        "≤ 10",
        wall <= 600,
    )
    for rule, total in sorted(totals.items(), key=lambda kv: -kv[1]["wall_s"]):
        report.add(
            "workflow",
            f"  {rule}: {total['jobs']} jobs, job-seconds wall / CPU",
            f"{total['wall_s']:.0f} / {total['cpu_s']:.0f}",
        )
    runs = workflow_convergence(run_dir)
    report.details["workflow"]["runs"] = runs.to_dict(orient="records")
    n_bad = int((~runs["converged"]).sum())
    report.add(
        "workflow",
        "training runs stopped at max_epochs while improving",
        f"{n_bad} of {len(runs)}",
        "0",
        n_bad == 0,
        note=f"epochs run {runs['epochs'].min()}-{runs['epochs'].max()}",
    )


def workflow_convergence(run_dir: Path):
    """scae.evaluation.summary.convergence over every final training run of a finished workflow."""
    import yaml

    from scae.evaluation.summary import convergence, read_histories

    train = yaml.safe_load((run_dir / "config" / "config.yaml").read_text())["train"]
    histories = read_histories((run_dir / "results").glob("*/k*/models/*/seed*/history.tsv"))
    return convergence(histories, train["max_epochs"], train["patience"])


# --- 5. where an NB training step's time goes ------------------------------------------------

#: The phases scae.train.train_epoch labels for torch.profiler.
PHASES = ("scae.batch", "scae.forward", "scae.loss", "scae.backward", "scae.optimizer", "scae.sync")


def profile_epoch(data, threads: int, loss: str, hidden, batch_size: int, seed: int = 0):
    """torch.profiler over one training epoch of ``loss`` (after a warm-up epoch) on
    ``threads`` threads: (wall seconds per step, {phase: ms per step}, {op: self ms per
    step}, steps). Phases are those scae.train.train_epoch labels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from scae.module.losses import get_loss
    from scae.module.network import AutoencoderModule
    from scae.train.optim import adam
    from scae.train.trainer import TrainParams, train_epoch

    torch.set_num_threads(threads)
    spec = get_loss(loss)
    params = bench_model_params(data.n_genes, hidden, spec.output)
    torch.manual_seed(seed)
    model = AutoencoderModule(params)
    optimizer = adam(model.parameters(), torch.device("cpu"), lr=1e-3, weight_decay=0.0)
    rows = data.rows("train")
    train = TrainParams(batch_size=batch_size)
    device = torch.device("cpu")
    train_epoch(model, optimizer, data, spec, {}, rows, train, seed, 1, device)  # warm-up
    steps = -(-len(rows) // batch_size)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        train_epoch(model, optimizer, data, spec, {}, rows, train, seed, 2, device)
        wall = time.perf_counter() - started
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total / 1e3 / steps for e in events if e.key in PHASES}
    ops = {e.key: e.self_cpu_time_total / 1e3 / steps for e in events if e.key not in PHASES}
    return wall / steps, phases, ops, steps


#: What the profile section profiles: the throughput section's NB model at its batch, and the
#: workflow's default MSE model at its default batch (the flops section's target row).
PROFILED = {
    "NB, batch 256, hidden 128-128": ("nb", (128, 128), 256),
    "MSE, batch 128, hidden 256-128": ("mse", (256, 128), 128),
}


def section_profile(report: Report, args, workdir: Path) -> None:
    from scae.train.cells import CellData

    _, pre = preprocessed_synthetic(10_000, workdir)
    data = CellData(pre, "none")
    report.details["profile"] = {}
    for name, (loss, hidden, batch) in PROFILED.items():
        results = {}
        for _ in range(1 if args.quick else 3):  # alternate thread counts; keep the best
            for threads in args.threads:
                run = profile_epoch(data, threads, loss, hidden, batch)
                if threads not in results or run[0] < results[threads][0]:
                    results[threads] = run
        report.details["profile"][name] = {
            t: {"step_ms": r[0] * 1e3, "phases_ms": r[1], "ops_ms": r[2]}
            for t, r in results.items()
        }
        counts = sorted(results)
        one, many = counts[0], counts[-1]
        section = f"profile {loss}"
        report.add(
            section,
            f"{name}: ms/step ({' | '.join(f'{t} thr.' for t in counts)})",
            " | ".join(f"{results[t][0] * 1e3:.2f}" for t in counts),
            note=f"{results[one][3]} steps per epoch, profiler on",
        )
        for phase in PHASES:
            values = [results[t][1].get(phase, 0.0) for t in counts]
            report.add(
                section,
                f"  {phase.removeprefix('scae.')}, ms/step",
                " | ".join(f"{v:.2f}" for v in values),
                note=f"speed-up {values[0] / values[-1]:.2f}×" if values[-1] else "",
            )
        ops_one, ops_many = results[one][2], results[many][2]
        print(f"\n  {name}: top ops by self CPU ms/step at {one} thread(s), beside {many}:")
        for op in sorted(ops_one, key=ops_one.get, reverse=True)[:16]:
            gain = ops_one[op] / ops_many[op] if ops_many.get(op) else float("nan")
            print(f"    {op:<40} {ops_one[op]:7.3f} {ops_many.get(op, 0.0):7.3f}  {gain:5.2f}×")
        print()


#: Each kernel of scae.module._kernels, and the loss whose training it serves. (mallopt is
#: process-wide once set, so it is measured by the throughput runs' own process, not here.)
KERNEL_LOSSES = {"cosine": "cosine", "mse": "mse", "adam": "nb"}


def section_kernels(report: Report, args, workdir: Path) -> None:
    """What each hand-written kernel gains: the training loop's cells/s with every kernel
    against the same run with that one kernel on torch's library path, alternated round by
    round in one process so both see the same machine load (a ratio, not a timing)."""
    import torch

    from scae.module._kernels import library_path
    from scae.train.cells import CellData

    rounds, epochs = (2 if args.quick else 4), (3 if args.quick else 4)
    _, pre = preprocessed_synthetic(10_000, workdir)
    data = CellData(pre, "none")
    n_train = len(data.rows("train"))
    torch.set_num_threads(args.threads[-1])
    details = report.details.setdefault("kernels", {"threads": args.threads[-1]})
    for kernel, loss in KERNEL_LOSSES.items():
        ours, library = [], []
        for r in range(rounds):
            # which path runs first alternates, so neither always meets the other's leftovers
            for use_kernel in (True, False) if r % 2 == 0 else (False, True):
                with contextlib.nullcontext() if use_kernel else library_path(kernel):
                    seconds = fit_epoch_seconds(
                        data, loss, (128, 128), 256, epochs, seed=r, validation=False
                    )
                (ours if use_kernel else library).extend(_epoch_rates(n_train, seconds))
        details[kernel] = {"loss": loss, "ours": ours, "library": library}
        gain = statistics.median(ours) / statistics.median(library) - 1
        report.add(
            f"kernels {args.threads[-1]}t",
            f"{kernel} kernel ({loss} loss), loop cells/s",
            f"{gain:+.1%}",
            note=f"{statistics.median(ours):,.0f} vs library path "
            f"{statistics.median(library):,.0f}",
        )
        print(f"    {kernel}: {gain:+.1%}", flush=True)


SECTIONS = {
    "throughput": section_throughput,
    "kernels": section_kernels,
    "flops": section_flops,
    "scaling": section_scaling,
    "workflow": section_workflow,
    "profile": section_profile,
}


def machine_description() -> str:
    """CPU model, cores, L2 per core, torch build (version, BLAS, parallel backend) and the
    1-minute load: what every number of a run was measured on."""
    import torch

    model, l2 = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        size = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip()
        l2 = f", L2 {size} per core"
    config = torch.__config__.show()
    blas = next(
        (
            part.split("=", 1)[1]
            for part in config.replace(",", " ").split()
            if part.startswith("BLAS_INFO=")
        ),
        "unknown BLAS",
    )
    backend = next(
        (
            line.split(":", 1)[1].strip()
            for line in torch.__config__.parallel_info().splitlines()
            if line.startswith("ATen parallel backend")
        ),
        "unknown threading",
    )
    capability = next(
        (
            line.split(":", 1)[1].strip()
            for line in config.splitlines()
            if "CPU capability usage" in line
        ),
        "",
    )
    return (
        f"{model}, {os.cpu_count()} cores{l2}; torch {torch.__version__} ({blas}, "
        f"{backend}, {capability or 'default'} kernels); 1-min load "
        f"{os.getloadavg()[0]:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="scae performance benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[2, 1],
        help="torch thread counts for throughput and flops (default 2 1)",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=None,
        help="cell counts of the scaling section's 2000-gene rows (default 10k "
        "100k 1M; none: --sizes alone, e.g. for the atlas rows only)",
    )
    parser.add_argument(
        "--atlas",
        action="store_true",
        help="scaling: add the atlas row, 1,306,127 × 27,998 at 2,000 UMIs/cell "
        "beside a 100k reference of that shape (--quick: 10k and 50k)",
    )
    parser.add_argument(
        "--atlas-sizes",
        type=int,
        nargs="+",
        default=None,
        help="cell counts of the atlas-shaped rows (reference first)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where data and workflow runs go (default: a temporary folder)",
    )
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scae-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    from scae.train import keep_freed_memory

    keep_freed_memory()  # as the workflow's training jobs do; in-process runs all share it

    machine = machine_description()
    print(
        f"scae benchmark ({'quick' if args.quick else 'full'}) on {machine}; work in {workdir}",
        flush=True,
    )
    report = Report()
    report.details["machine"] = machine
    started = time.perf_counter()
    loads = []
    for name in args.only:
        loads.append(os.getloadavg()[0])
        print(f"[{name}] (1-min load average {loads[-1]:.1f})", flush=True)
        SECTIONS[name](report, args, workdir)
    loads.append(os.getloadavg()[0])
    report.add(
        "machine",
        "1-min load average at each section's start, end",
        " ".join(f"{x:.1f}" for x in loads),
        note="other processes slow 2-thread runs",
    )
    report.details["total_s"] = time.perf_counter() - started

    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"results{suffix}.tsv").write_text(report.tsv())
    (RESULTS / f"results{suffix}.md").write_text(
        f"{machine}; `python bench/run.py{' --quick' if args.quick else ''}`\n\n"
        f"{report.markdown()}\n"
    )
    (RESULTS / f"details{suffix}.json").write_text(json.dumps(report.details, indent=1))
    print()
    print(report.markdown())
    print(f"\nwritten to {RESULTS}/ in {report.details['total_s'] / 60:.1f} min")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
