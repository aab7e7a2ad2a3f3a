import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
from scae.config import BASELINES, COUNT_LOSSES, InputError, check_input_path

validate(config, "../config/schema.yaml")

DATASETS = [name for name, spec in config["datasets"].items() if spec["enabled"]]
if not DATASETS:
    raise InputError(
        "config/config.yaml: no dataset has enabled: true under datasets; enable one"
    )
for _name in DATASETS:
    check_input_path(config["datasets"][_name]["path"], _name)
LOSS_NAMES = list(config["losses"])
SEEDS = [int(seed) for seed in config["seeds"]]


wildcard_constraints:
    dataset="|".join(DATASETS),
    loss="|".join(LOSS_NAMES),
    seed=r"\d+",
    baseline="|".join(BASELINES),


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def loss_params(wildcards):
    return config["loss_params"].get(wildcards.loss, {})


def run_ids(wildcards):
    """Every (model, run) pair evaluated for a dataset: autoencoders, then baselines."""
    runs = [(loss, f"seed{seed}") for loss in LOSS_NAMES for seed in SEEDS]
    return runs + [("baseline", name) for name in BASELINES]


def metric_files(wildcards):
    return [
        f"results/{wildcards.dataset}/metrics/{model}/{run}.tsv"
        for model, run in run_ids(wildcards)
    ]


def mem_mb_from_input(base_mb, per_input_mb):
    """Memory that scales with the input's size on disk and grows with each retry."""

    def mem_mb(wildcards, input, attempt):
        return int((base_mb + per_input_mb * input.size_mb) * attempt)

    return mem_mb
