"""The workflow through `--profile profiles/slurm` on a real (one-node, localhost) SLURM cluster.

CI starts the cluster with `.ci/slurm-start.sh` and sets SCAE_REQUIRE_SLURM=1, so there this
test fails rather than skips when SLURM is not reachable.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from .conftest import REPO, run_snakemake, write_small_workflow_config

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]


def _slurm_reachable() -> bool:
    if shutil.which("sinfo") is None:
        return False
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return probe.returncode == 0 and any(s in probe.stdout for s in ("idle", "mixed"))


@pytest.fixture(scope="module")
def slurm_available():
    if not _slurm_reachable():
        if os.environ.get("SCAE_REQUIRE_SLURM") == "1":
            pytest.fail("SCAE_REQUIRE_SLURM=1 but no idle SLURM node answers `sinfo`")
        pytest.skip("no SLURM cluster (start one with `bash .ci/slurm-start.sh`)")


def _config(workdir: Path) -> Path:
    config = write_small_workflow_config(workdir, ["mse", "nb"], [0])
    text = config.read_text() + "mcv:\n  enabled: false\n"
    config.write_text(text)
    return config


def test_every_rule_runs_as_a_slurm_job_and_matches_a_local_run(slurm_available, tmp_path):
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    on_slurm.mkdir()
    local.mkdir()
    run_snakemake(
        on_slurm,
        _config(on_slurm),
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--profile",
        str(REPO / "tests" / "slurm_overlay"),
        "--workflow-profile",
        "none",
        timeout=1500,
    )
    run_snakemake(local, _config(local), "--cores", "2")

    logs = sorted((on_slurm / "logs").rglob("*.log"))
    assert len(logs) >= 11  # preprocess, 2 train, 3 baselines, 5 evaluate, …
    slurm_logs = on_slurm / ".snakemake" / "slurm_logs"
    for log in logs:
        match = re.search(r"SLURM_JOB_ID=(\w+)", log.read_text())
        assert match and match.group(1) != "none", f"{log} did not run inside a SLURM job"
        job_logs = list(slurm_logs.glob(f"rule_*/**/{match.group(1)}.log"))
        assert job_logs, f"no SLURM job log for job {match.group(1)} ({log})"

    slurm_metrics = pd.read_csv(on_slurm / "results/pbmc_small/metrics.tsv", sep="\t")
    local_metrics = pd.read_csv(local / "results/pbmc_small/metrics.tsv", sep="\t")
    pd.testing.assert_frame_equal(slurm_metrics, local_metrics)
