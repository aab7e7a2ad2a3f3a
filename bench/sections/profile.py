"""Where a training step's time goes: torch.profiler of one NB and one MSE training epoch at
1 and 2 threads, ms per step by phase (batch, forward, loss, backward, optimizer, sync) and
by op."""

from __future__ import annotations

import time
from pathlib import Path

from .common import Report, bench_model_params, preprocessed_synthetic

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
