"""Shared fixtures: small real subsets of the bundled pbmc3k counts."""

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PBMC3K = REPO / "resources" / "data" / "pbmc3k.h5ad"


def pbmc_subset(n_cells: int, seed: int = 0) -> ad.AnnData:
    """``n_cells`` real pbmc3k cells (raw counts), sampled uniformly, all genes kept."""
    full = ad.read_h5ad(PBMC3K)
    rows = np.sort(np.random.default_rng(seed).choice(full.n_obs, n_cells, replace=False))
    return full[rows].copy()


@pytest.fixture(scope="session")
def pbmc_small() -> ad.AnnData:
    return pbmc_subset(400)


@pytest.fixture(scope="module")
def small_data(pbmc_small) -> ad.AnnData:
    """pbmc_small preprocessed (200 HVGs), one copy per test module."""
    from scae.data.params import PreprocessParams
    from scae.data.preprocess import preprocess

    return preprocess(
        pbmc_small,
        PreprocessParams(n_top_genes=200),
        dataset="t",
        label_key="cell_type",
        mito_prefix="MT-",
    )


def write_small_workflow_config(
    workdir: Path, losses: list[str], seeds: list[int], n_cells: int = 400
) -> Path:
    """A config for a quick real run: ``n_cells`` pbmc3k cells, 300 HVGs, a small network."""
    import yaml

    data = workdir / "data" / "pbmc_small.h5ad"
    data.parent.mkdir(parents=True, exist_ok=True)
    pbmc_subset(n_cells).write_h5ad(data)
    config = {
        "datasets": {
            "pbmc_small": {"path": str(data), "label_key": "cell_type", "mito_prefix": "MT-"}
        },
        "preprocess": {"n_top_genes": 300},
        "losses": losses,
        # exercises the training-cell clusters of preprocess (and their use in training)
        "loss_params": {"cosine_embedding": {"negative_sampling": "cluster"}},
        "seeds": seeds,
        "model": {"hidden": [64], "latent_dim": 8},
        # converges by patience within 23-55 epochs (measured for every loss, seeds 0-1)
        "train": {"batch_size": 64, "learning_rate": 0.003, "max_epochs": 150, "patience": 5},
        # every loss gets the same small search: 2 trials, trained to convergence like the
        # final runs (the same cap), so seed 0's run at the reference rank is the winner's
        "tune": {
            "n_trials": 2,
            "max_epochs": 150,
            "space": {"batch_size": [32, 64], "hidden": [[64], [32]]},
        },
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake_command(workdir: Path, configfile: Path, *args: str) -> list[str]:
    """The command line that runs the repository's Snakefile in ``workdir`` with ``args``."""
    import sys

    # --configfile takes several files: it goes first, so that no target in args is read
    # as one more
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--configfile",
        str(configfile),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]


def run_snakemake(workdir: Path, configfile: Path, *extra: str, timeout: int = 1200):
    """Run the repository's Snakefile in ``workdir``; fail the test with its output."""
    import subprocess

    command = snakemake_command(workdir, configfile, *extra)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"snakemake failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


SMALL_RUN_SEEDS = [0, 1]
SMALL_RUN_RANKS = [2, 8]


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """The whole default workflow (every loss, two seeds, two ranks, MCV, plots) on 400
    real cells."""
    import yaml

    from scae.module.losses import LOSSES

    workdir = tmp_path_factory.mktemp("workflow")
    config = write_small_workflow_config(workdir, list(LOSSES), SMALL_RUN_SEEDS)
    settings = yaml.safe_load(config.read_text())
    settings["model"]["latent_dim"] = SMALL_RUN_RANKS  # the reference rank: 8, the largest
    config.write_text(yaml.safe_dump(settings))
    run_snakemake(workdir, config, "--cores", "2")
    return workdir
