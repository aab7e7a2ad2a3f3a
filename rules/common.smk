import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# Rules import the package of this checkout, not an installed copy. With `pip install -e .`
# (the README's quick start) the two are the same; with --use-conda every job runs in an env
# built from envs/*.yaml, and an env file cannot name where the checkout is (a relative
# `pip: [-e ..]` entry resolves against wherever the env gets built). The parse step needs
# it for scae.config; Snakemake then appends this process's sys.path to every `script:`
# job's (snakemake.script's preamble), so this one line also serves every rule's script.
sys.path.insert(0, workflow.basedir)
from scae.config import (
    BASELINES,
    COUNT_LOSSES,
    MCV_BASELINES,
    MCV_SUFFIX,
    InputError,
    check_input_path,
    describe_schema_error,
)
from scae.sizes import SizeNeeds, input_shape

try:
    validate(config, "../config/schema.yaml")
except WorkflowError as err:  # one line naming the key and the allowed values
    if not hasattr(err.__context__, "validator"):  # the jsonschema ValidationError
        raise
    raise InputError(
        describe_schema_error(
            err.__context__, " / ".join(map(str, workflow.configfiles)) or "config"
        )
    ) from None

DATASETS = [name for name, spec in config["datasets"].items() if spec["enabled"]]
if not DATASETS:
    raise InputError(
        "config/config.yaml: no dataset has enabled: true under datasets; enable one"
    )
LOSS_NAMES = list(config["losses"])
# Training-cell Leiden clusters are built only for cosine_embedding's cluster negatives.
CLUSTERS = (
    "cosine_embedding" in LOSS_NAMES
    and config["loss_params"]["cosine_embedding"]["negative_sampling"] == "cluster"
)
# What the later stages need of each dataset: checked here from the input's metadata (so
# `snakemake -n` refuses a dataset too small for them), then exactly by preprocess.
NEEDS = {"latent_dim": config["model"]["latent_dim"], "clusters": CLUSTERS}
for _name in DATASETS:
    _spec = config["datasets"][_name]
    check_input_path(_spec["path"], _name)
    _shape = input_shape(_spec["path"], _spec["counts"])
    if _shape is not None:
        SizeNeeds(**NEEDS).check_input(*_shape, _spec["path"], _name)
TUNE = config["tune"]["enabled"]
MCV = config["mcv"]
# Every dataset also runs as a molecular cross-validation variant "<name>.mcv".
MCV_DATASETS = [name + MCV_SUFFIX for name in DATASETS] if MCV["enabled"] else []


def alternatives(names):
    """A wildcard regex matching exactly these names (no path separators, no traversal)."""
    return "|".join(re.escape(name) for name in names)


wildcard_constraints:
    dataset=alternatives(DATASETS + MCV_DATASETS),
    loss=alternatives(LOSS_NAMES),
    seed=r"\d+",
    baseline=alternatives(MCV_BASELINES),


def is_mcv(wildcards):
    return wildcards.dataset.endswith(MCV_SUFFIX)


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset.removesuffix(MCV_SUFFIX)]


def preprocess_config(wildcards):
    """config['preprocess'] with the dataset's own values (datasets.<name>.preprocess) over it."""
    return config["preprocess"] | dataset_config(wildcards).get("preprocess", {})


def loss_params(wildcards):
    return config["loss_params"].get(wildcards.loss, {})


def tuned_settings(wildcards):
    """The best.yaml a training job uses: its dataset's (the .mcv variant shares it)."""
    if not TUNE:
        return []
    base = wildcards.dataset.removesuffix(MCV_SUFFIX)
    return f"results/{base}/tuning/{wildcards.loss}/best.yaml"


def run_ids(dataset):
    """Every (model, run) pair evaluated for a dataset: autoencoders, then baselines."""
    mcv = dataset.endswith(MCV_SUFFIX)
    seeds = MCV["seeds"] if mcv else config["seeds"]
    runs = [(loss, f"seed{seed}") for loss in LOSS_NAMES for seed in seeds]
    return runs + [("baseline", name) for name in (MCV_BASELINES if mcv else BASELINES)]


def metric_files(wildcards):
    """Metrics of every run of a dataset and of its cross-validation variant."""
    variants = [wildcards.dataset]
    if MCV["enabled"]:
        variants.append(wildcards.dataset + MCV_SUFFIX)
    return [
        f"results/{variant}/metrics/{model}/{run}.tsv"
        for variant in variants
        for model, run in run_ids(variant)
    ]


def per_cell_files(wildcards):
    """Per-cell scores of every run of a dataset, for the paired comparisons."""
    return [
        f"results/{wildcards.dataset}/metrics/{model}/{run}.per_cell.tsv.gz"
        for model, run in run_ids(wildcards.dataset)
    ]


def mem_mb_from_input(base_mb, per_input_mb):
    """Memory that scales with the input's size on disk and grows with each retry."""

    def mem_mb(wildcards, input, attempt):
        return int((base_mb + per_input_mb * input.size_mb) * attempt)

    return mem_mb
