"""FLOP/s of MSE training: our MSE training's model FLOP/s vs the torch 2048³ GEMM peak,
same process, beside a plain torch MSE autoencoder (the anchor) and the Linear layers alone."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from .common import Report, epoch_rates, fit_epoch_seconds, preprocessed_synthetic


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
    return epoch_rates(len(x), seconds)


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
        return [rate * cell_flops / 1e9 for rate in epoch_rates(n_train, seconds)]

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
