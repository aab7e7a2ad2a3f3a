"""The default workflow (config/config.yaml) end to end with --cores 2: its wall time, the
job-seconds of each rule, and whether every training run converged."""

from __future__ import annotations

import shutil
from pathlib import Path

from .common import REPO, Report, read_benchmark, run_workflow


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
