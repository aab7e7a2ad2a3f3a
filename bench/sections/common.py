"""What several benchmark sections share: the report, the synthetic data, the benchmark's
model and its timed training, the workflow run through Snakemake and its benchmark files, and
the machine description."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
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
    ``epoch_rates``).

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


def epoch_rates(n_cells: int, seconds: list[float]) -> list[float]:
    """Cells/s of each epoch of ``n_cells`` cells, the first (warm-up) epoch left out unless it
    is the only one."""
    return [n_cells / s for s in (seconds[1:] or seconds)]


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
