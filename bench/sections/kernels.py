"""Kernels: what each hand-written kernel of scae.module._kernels gains, the training loop's
cells/s against torch's library path."""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path

from .common import Report, epoch_rates, fit_epoch_seconds, preprocessed_synthetic

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
                (ours if use_kernel else library).extend(epoch_rates(n_train, seconds))
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
