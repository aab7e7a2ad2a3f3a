import importlib
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
    MCV_SUFFIX,
    InputError,
    check_input_path,
    describe_schema_error,
)
from scae import layout
from scae.orientation import planned_orientation
from scae.registry import (
    BASELINES,
    baselines_in,
    missing_packages,
    needs_clusters,
    needs_counts,
)
from snakemake.settings.types import DeploymentMethod
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
# The field's own models (scae.registry.PEERS), at every rank and seed of a dataset itself
# (not its MCV variant); each runs in its own env, so without --use-conda its package must be
# importable here.
PEERS = list(config["peers"])
if DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method:
    _missing = missing_packages(PEERS)
    if _missing:
        raise InputError("; ".join(_missing))
# Training-cell Leiden clusters are built only for cosine_embedding's cluster negatives.
CLUSTERS = needs_clusters(LOSS_NAMES, config["loss_params"])
# Latent ranks: every loss × seed trains at each, PCA is fit at each. Tuning, molecular
# cross-validation and the per-run figures run at the reference rank.
_latent = config["model"]["latent_dim"]
RANKS = sorted(set(_latent if isinstance(_latent, list) else [_latent]))
REFERENCE_RANK = config["model"]["reference_rank"] or RANKS[-1]
if REFERENCE_RANK not in RANKS:
    raise InputError(
        f"invalid configuration: model.reference_rank = {REFERENCE_RANK} is not one of "
        f"model.latent_dim {RANKS}; set it to one of them (or null for the largest); fix it "
        f"in {' / '.join(map(str, workflow.configfiles))}"
    )
# What the later stages need of each dataset: checked here from the input's metadata (so
# `snakemake -n` refuses a dataset too small for them), then exactly by preprocess.
NEEDS = {"latent_dim": RANKS[-1], "clusters": CLUSTERS}
# Datasets whose input stores genes as rows (read whole and transposed by preprocess).
TRANSPOSED = set()
# Which axis holds the cells, from the names in the input's metadata: a genes x cells table
# is transposed (or refused, when the config says otherwise) before any job runs.
for _name in DATASETS:
    _spec = config["datasets"][_name]
    check_input_path(_spec["path"], _name)
    _orientation = planned_orientation(
        _spec["path"],
        _name,
        _spec["counts"],
        _spec["transpose"],
        _spec["mito_prefix"] or None,
        _spec["label_key"] or None,
    )
    if _orientation is not None and _orientation.transposed:
        TRANSPOSED.add(_name)
        print(f"dataset {_name!r}: {_orientation.sentence()}", file=sys.stderr)
    _shape = input_shape(_spec["path"], _spec["counts"])
    if _shape is not None:
        if _orientation is not None and _orientation.transposed:
            _shape = _shape[::-1]
        SizeNeeds(**NEEDS).check_input(*_shape, _spec["path"], _name)
TUNE = config["tune"]["enabled"]
# One training job per dataset × loss × seed for all ranks (rules/train.smk's train_ranks).
STACK_RANKS = config["train"]["models_per_job"] == "ranks" and len(RANKS) > 1
# What the schema cannot say: ranges given low to high, and no empty architecture to try.
_space = config["tune"]["space"]
for _key in ("learning_rate", "dropout"):
    if _space[_key][0] > _space[_key][1]:
        raise InputError(
            f"invalid configuration: tune.space.{_key} = {_space[_key]} is not [low, high]; "
            f"swap the two values; fix it in {' / '.join(map(str, workflow.configfiles))}"
        )
if [] in _space["hidden"]:
    raise InputError(
        f"invalid configuration: tune.space.hidden = {_space['hidden']} holds an empty "
        "architecture, which the search cannot build; remove it (model.hidden: [] trains a "
        "linear autoencoder without tuning); fix it in "
        f"{' / '.join(map(str, workflow.configfiles))}"
    )
MCV = config["mcv"]
# Every dataset also runs as a molecular cross-validation variant "<name>.mcv".
MCV_DATASETS = [name + MCV_SUFFIX for name in DATASETS] if MCV["enabled"] else []


# Runs live under results/{dataset}/k{rank}/ (autoencoders, PCA at that rank) or, for the
# baselines that have no rank (the mean profile, library size, MCV's), under .../shared/
# (scae.layout, which the scripts and readers share).
SHARED_SCOPE = layout.SHARED


def alternatives(names):
    """A wildcard regex matching exactly these names (no path separators, no traversal)."""
    return "|".join(re.escape(name) for name in names)


def in_report(name, subcategory):
    """results/{dataset}/{name}, shown in the report under its dataset and captioned by
    report/{the name's stem}.rst."""
    return report(
        f"results/{{dataset}}/{name}",
        caption=f"../report/{Path(name).stem}.rst",
        category="{dataset}",
        subcategory=subcategory,
    )


def every_loss(pattern):
    """pattern's files for every configured loss, its other wildcards left open."""
    return expand(pattern, loss=LOSS_NAMES, allow_missing=True)


wildcard_constraints:
    dataset=alternatives(DATASETS + MCV_DATASETS),
    loss=alternatives(LOSS_NAMES),
    seed=r"\d+",
    rank=alternatives(map(str, RANKS)),
    scope=alternatives([f"k{rank}" for rank in RANKS] + [SHARED_SCOPE]),
    baseline=alternatives(BASELINES),
    peer=alternatives(PEERS) if PEERS else "(?!)",


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


def tuned_run(wildcards):
    """The winning tuning trial's final state, for the one training job that may be that trial.

    Tuning trains at the reference rank with seed tune.seed on the dataset's own cells, so
    that job resumes the finished trial rather than training it again (when the epoch cap
    differs too, the checkpoint's fingerprint says so and the job trains). A train_ranks job
    (no rank wildcard) gets it for its run at the reference rank.
    """
    if (
        not TUNE
        or wildcards.dataset.endswith(MCV_SUFFIX)
        or int(wildcards.get("rank", REFERENCE_RANK)) != REFERENCE_RANK
        or int(wildcards.seed) != config["tune"]["seed"]
    ):
        return []
    return f"results/{wildcards.dataset}/tuning/{wildcards.loss}/best_run.pt"


def at_every_rank(pattern):
    """results/{dataset}/k{rank}/pattern at every rank, its other wildcards left open."""
    return expand(
        f"results/{{dataset}}/k{{rank}}/{pattern}", rank=RANKS, allow_missing=True
    )


def seeds_of(dataset):
    """A dataset's training seeds: its own (datasets.<name>.seeds), else config['seeds']."""
    return config["datasets"][dataset.removesuffix(MCV_SUFFIX)].get(
        "seeds", config["seeds"]
    )


def ranks_of(dataset):
    """The ranks a dataset trains at: all of them; its MCV variant only the reference rank."""
    return [REFERENCE_RANK] if dataset.endswith(MCV_SUFFIX) else RANKS


def run_ids(dataset, ranks=None):
    """Every (scope, model, run) evaluated for a dataset (at ``ranks``, default all of its
    ranks): autoencoders and PCA at each rank, then the baselines without a rank."""
    mcv = dataset.endswith(MCV_SUFFIX)
    seeds = MCV["seeds"] if mcv else seeds_of(dataset)
    baselines = baselines_in("mcv" if mcv else "dataset")
    runs = []
    for rank in ranks or ranks_of(dataset):
        runs += [
            (layout.scope(rank), loss, f"seed{seed}")
            for loss in LOSS_NAMES
            for seed in seeds
        ]
        runs += [
            (layout.scope(rank), "baseline", model.short_name)
            for model in baselines
            if model.ranked
        ]
        if not mcv:
            runs += [
                (layout.scope(rank), peer, f"seed{seed}")
                for peer in PEERS
                for seed in seeds
            ]
    shared = [model.short_name for model in baselines if not model.ranked]
    return runs + [(SHARED_SCOPE, "baseline", name) for name in shared]


def variants_of(wildcards):
    """A dataset and, with mcv.enabled, its cross-validation variant."""
    return [wildcards.dataset] + (
        [wildcards.dataset + MCV_SUFFIX] if MCV["enabled"] else []
    )


def metric_files(wildcards):
    """Metrics of every run of a dataset and of its cross-validation variant."""
    return [
        layout.run_file(variant, scope, "metrics", model, run, ".tsv")
        for variant in variants_of(wildcards)
        for scope, model, run in run_ids(variant)
    ]


def per_cell_files(wildcards, ranks=None):
    """Per-cell scores of every run of a dataset (at ``ranks``), for the paired comparisons."""
    return [
        layout.run_file(
            wildcards.dataset, scope, "metrics", model, run, ".per_cell.tsv.gz"
        )
        for scope, model, run in run_ids(wildcards.dataset, ranks)
    ]


def reference_per_cell_files(wildcards):
    return per_cell_files(wildcards, [REFERENCE_RANK])


def history_files(wildcards, ranks=None):
    """Training histories of every autoencoder and peer run of a dataset (at ``ranks``) and,
    with ``ranks`` None, of its cross-validation variant (whether each run converged).
    """
    variants = variants_of(wildcards) if ranks is None else [wildcards.dataset]
    return [
        layout.history_file(variant, scope, model, run)
        for variant in variants
        for scope, model, run in run_ids(variant, ranks)
        if model in LOSS_NAMES or model in PEERS
    ]


def reference_history_files(wildcards):
    """The autoencoders' histories at the reference rank (the training-curve figure)."""
    return [
        path
        for path in history_files(wildcards, [REFERENCE_RANK])
        if layout.parse(path).model in LOSS_NAMES
    ]


def model_at_rank(wildcards):
    """config['model'] for one latent rank (the job's, or the reference rank for tuning)."""
    rank = int(wildcards.get("rank", REFERENCE_RANK))
    settings = {k: v for k, v in config["model"].items() if k != "reference_rank"}
    return settings | {"latent_dim": rank}


def scope_rank(wildcards):
    """The latent rank of a run's scope (k32 → 32), None for the shared baselines."""
    return (
        None
        if wildcards.scope == SHARED_SCOPE
        else int(wildcards.scope.removeprefix("k"))
    )


def umap_embeddings(wildcards):
    """The first seed's embedding of every loss and PCA's, at the reference rank."""
    dataset, scope = wildcards.dataset, layout.scope(REFERENCE_RANK)
    seed = seeds_of(dataset)[0]
    return [
        layout.run_file(dataset, scope, "embeddings", loss, f"seed{seed}", ".h5ad")
        for loss in LOSS_NAMES
    ] + [layout.run_file(dataset, scope, "embeddings", "baseline", "pca", ".h5ad")]


def label_key(wildcards):
    return dataset_config(wildcards)["label_key"]


def mem_mb_from_input(base_mb, per_input_mb):
    """Memory that scales with the input's size on disk and grows with each retry."""

    def mem_mb(wildcards, input, attempt):
        return int((base_mb + per_input_mb * input.size_mb) * attempt)

    return mem_mb


def input_path(wildcards):
    return dataset_config(wildcards)["path"]


def split_seed(wildcards):
    return preprocess_config(wildcards)["split_seed"]


def mcv_settings(wildcards):
    """The molecule split of a cross-validation variant, None for a dataset itself."""
    return MCV if is_mcv(wildcards) else None


def needs_integer_counts(wildcards):
    """Count losses and molecule splitting both need integer counts."""
    return is_mcv(wildcards) or needs_counts(LOSS_NAMES)


def preprocess_mem_mb(wildcards, input, attempt):
    """The result (cells × HVGs) and the blocks in flight, not the whole input; scae.data
    (anndata) is imported only once a preprocess job is scheduled, not at parse time."""
    estimate = importlib.import_module("scae.data.input_size").preprocess_mem_mb
    return attempt * estimate(
        input[0],
        dataset_config(wildcards)["counts"],
        preprocess_config(wildcards)["n_top_genes"],
        is_mcv(wildcards),
        read_whole=wildcards.dataset.removesuffix(MCV_SUFFIX) in TRANSPOSED,
    )


def minutes_per_attempt(minutes):
    """A runtime limit that grows with each retry."""

    def runtime(wildcards, attempt):
        return minutes * attempt

    return runtime


def wildcard_number(name):
    """A numeric wildcard (rank, seed) as the integer the script needs."""

    def number(wildcards):
        return int(wildcards[name])

    return number


def tuning_outcomes(name):
    """Every loss's tuning file ``name`` (trials.tsv, best.yaml), none when tuning is off: the
    tuning figure plots the trials, the summary names those the epoch cap ended."""

    def files(wildcards):
        if not TUNE:
            return []
        return [
            f"results/{wildcards.dataset}/tuning/{loss}/{name}" for loss in LOSS_NAMES
        ]

    return files
