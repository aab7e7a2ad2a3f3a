"""Throughput: our NB training vs scvi-tools SCVI, matched architecture, same data,
alternating; and what a fresh process pays for its first optimizer."""

from __future__ import annotations

import logging
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from .common import REPO, Report, epoch_rates, fit_epoch_seconds, preprocessed_synthetic


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
            ours += epoch_rates(
                n_train, fit_epoch_seconds(data, "nb", (128, 128), 256, epochs, seed=r)
            )
            loop += epoch_rates(
                n_train,
                fit_epoch_seconds(data, "nb", (128, 128), 256, epochs, seed=r, validation=False),
            )
            with library_path("adam"):
                torch_adam += epoch_rates(
                    n_train,
                    fit_epoch_seconds(
                        data, "nb", (128, 128), 256, epochs, seed=r, validation=False
                    ),
                )
            if have_scvi:
                torch.set_num_threads(threads)
                n_scvi, seconds = scvi_cells_per_second(raw, 256, epochs, seed=r)
                theirs += epoch_rates(n_scvi, seconds)
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
