"""scae performance benchmark: one command, one table.

    python bench/run.py            # everything (about 25 minutes on 2 cores)
    python bench/run.py --quick    # a smaller version of every section (about 5 minutes)
    python bench/run.py --only throughput flops

Sections (see bench/README.md for what each measures and its acceptance target), one module
each in bench/sections/:

  throughput  our NB training vs scvi-tools SCVI, matched architecture, same data, alternating
  kernels     what each hand-written kernel gains: training-loop cells/s with it vs without
  flops       our MSE training's model FLOP/s vs the torch 2048³ GEMM peak, same process
  scaling     the real workflow's preprocess + train (1 epoch) on 10k / 100k / 1M synthetic
              cells × 2000 genes: wall time and peak RSS from Snakemake's benchmark files;
              --atlas adds 1.3 M × 28 k cells at 2,000 UMIs/cell (10x's mouse brain shape)
  workflow    the default workflow (config/config.yaml) end to end with --cores 2
  profile     torch.profiler of one NB and one MSE training epoch at 1 and 2 threads: ms
              per step by phase (batch, forward, loss, backward, optimizer, sync) and op
  stacked     a loss's models at ranks 4-32 trained as one stacked model vs one at a time
              (pbmc3k, mse and nb, 1 and 2 threads): models/s, cells/s per model

Results: a table on stdout, bench/results/results.{tsv,md}, and per-section details there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder (bench/) is on sys.path, so its sections package imports.
from sections import flops, kernels, profile, scaling, stacked, throughput, workflow
from sections.common import RESULTS, Report, machine_description

#: The sections by their --only name, run in this order by default; each is a function
#: (report, args, workdir) -> None in its module of bench/sections/.
SECTIONS = {
    "throughput": throughput.section_throughput,
    "kernels": kernels.section_kernels,
    "flops": flops.section_flops,
    "scaling": scaling.section_scaling,
    "workflow": workflow.section_workflow,
    "profile": profile.section_profile,
    "stacked": stacked.section_stacked,
}


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
        "--device",
        default="cpu",
        help="the stacked section's device: cpu (default) or cuda (bench/device_run.sh)",
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
