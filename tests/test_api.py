"""The notebook API (scae.preprocess, scae.Autoencoder): the README's example verbatim, the
workflow's train job through the same code path, defaults, errors, new cells."""

import re
import shutil
import subprocess
import sys
import zipfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import yaml

import scae
from scae.config import RANGE_KEYWORDS, InputError, check_number
from scae.module.losses import LOSSES
from scae.module.network import ModelParams
from scae.train.trainer import TrainParams
from scae.train.tune import apply_best

from .conftest import REPO, SMALL_RUN_SEEDS, pbmc_subset

SMALL = {"hidden": (32,), "latent_dim": 4}
_PYCACHE = shutil.ignore_patterns("__pycache__")


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    """400 real pbmc3k cells, preprocessed with clusters, registered with labels."""
    pre = scae.preprocess(
        pbmc_subset(400),
        scae.PreprocessParams(n_top_genes=200),
        label_key="cell_type",
        clusters=True,
    )
    scae.Autoencoder.setup_anndata(pre, labels_key="cell_type")
    return pre


@pytest.fixture(scope="module")
def trained(adata) -> scae.Autoencoder:
    return scae.Autoencoder(adata, "nb", **SMALL).train(max_epochs=4, batch_size=64)


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## In a notebook") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_notebook_example_runs_verbatim(tmp_path, monkeypatch):
    """The README's code block, unchanged, on 400 pbmc3k cells laid where it reads them."""
    data = tmp_path / "resources" / "data" / "pbmc3k.h5ad"
    data.parent.mkdir(parents=True)
    pbmc_subset(400).write_h5ad(data)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    adata, model = namespace["adata"], namespace["model"]
    assert adata.obsm["X_scae"].shape == (adata.n_obs, 32)
    assert adata.layers["scae_nb"].shape == adata.shape
    assert (tmp_path / "models/pbmc3k_nb/model.pt").exists()
    assert (tmp_path / "models/pbmc3k_nb/history.tsv").exists()
    # the loaded model (the example ends with it) embeds exactly as the trained one did
    np.testing.assert_array_equal(model.get_latent_representation(), adata.obsm["X_scae"])
    assert model.best_epoch >= 1 and model.stopped_by in ("patience", "max_epochs")
    counts = namespace["expected_counts"]
    # expected counts of a count model sum to about each cell's library size over the HVGs
    assert np.all(counts >= 0) and np.isfinite(counts).all()


@pytest.mark.workflow
def test_workflow_train_job_is_the_api(small_run):
    """The train job's embedding equals a notebook run of the API with the same settings."""
    results = small_run / "results/pbmc_small"
    config = yaml.safe_load((small_run / "config.yaml").read_text())
    best = yaml.safe_load((results / "tuning/mse/best.yaml").read_text())
    # the job at rank 8: its model section with that one latent_dim
    model = {**config["model"], "latent_dim": 8}
    model_settings, train_settings = apply_best(model, config["train"], best)
    adata = ad.read_h5ad(results / "preprocessed.h5ad")
    scae.Autoencoder.setup_anndata(adata, labels_key="cell_type")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workflow's train.threads: float sums depend on it
    try:
        model = scae.Autoencoder(
            adata, "mse", hidden=tuple(model_settings.pop("hidden")), **model_settings
        )
        model.train(**train_settings, seed=SMALL_RUN_SEEDS[0], device="cpu")
        latent = model.get_latent_representation()
    finally:
        torch.set_num_threads(threads)
    job = ad.read_h5ad(results / f"k8/embeddings/mse/seed{SMALL_RUN_SEEDS[0]}.h5ad")
    np.testing.assert_array_equal(latent, job.obsm["X_scae"])
    history = pd.read_csv(results / f"k8/models/mse/seed{SMALL_RUN_SEEDS[0]}/history.tsv", sep="\t")
    # the same epochs with the same losses (up to the TSV's text round-trip of a float)
    np.testing.assert_allclose(history["val_loss"], model.history["val_loss"], rtol=1e-14)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_trains_with_default_parameters(adata, loss):
    model = scae.Autoencoder(adata, loss, **SMALL)
    assert model.loss_params == LOSSES[loss].defaults
    model.train(max_epochs=2, batch_size=64)
    assert len(model.history) == 2 and np.isfinite(model.history["val_loss"]).all()
    recon = model.get_reconstruction(indices=np.arange(5))
    assert recon.shape == (5, adata.n_vars) and np.isfinite(recon).all()


def test_save_load_round_trip_and_new_cells(trained, adata, tmp_path):
    trained.save(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        trained.save(tmp_path / "m")
    fresh = adata.copy()
    del fresh.uns["_scae_setup"]  # load registers it with the saved setup
    loaded = scae.Autoencoder.load(tmp_path / "m", fresh, device="cpu")
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), trained.get_latent_representation()
    )
    pd.testing.assert_frame_equal(loaded.history, trained.history)
    assert (loaded.best_epoch, loaded.stopped_by) == (trained.best_epoch, trained.stopped_by)
    # new cells: a separate AnnData of 50 of them, embedded with the training cells' scaling
    rows = np.arange(50, 100)
    new = adata[rows].copy()
    for key in ("split", "library_size"):
        del new.obs[key]
    new.var[["train_mean", "train_std"]] = 0.0  # would be wrong; the model brings its own
    del new.uns["_scae_setup"], new.uns["scae"]
    scae.Autoencoder.setup_anndata(new, target_sum=1e4)
    new.obs["library_size"] = adata.obs["library_size"].to_numpy()[rows]
    np.testing.assert_allclose(
        trained.get_latent_representation(new),
        trained.get_latent_representation(indices=rows),
        rtol=1e-5,
        atol=1e-5,
    )


def test_save_writes_atomically(trained, tmp_path, monkeypatch):
    """A save that dies half-way leaves neither file (the workflow's outputs rely on it)."""

    def dies(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError, match="disk full"):
        trained.save(tmp_path / "m")
    assert not any((tmp_path / "m").glob("*"))


def test_latent_key_added_writes_obsm(trained, adata):
    target = adata.copy()
    latent = trained.get_latent_representation(target, key_added="X_test")
    np.testing.assert_array_equal(target.obsm["X_test"], latent)
    with pytest.raises(ValueError, match="leave indices=None"):
        trained.get_latent_representation(indices=[0, 1], key_added="X_test")


def test_counts_space_inverts_the_common_space(trained):
    expression = trained.get_reconstruction(indices=np.arange(20))
    counts = trained.get_reconstruction(indices=np.arange(20), space="counts")
    library = trained.adata.obs["library_size"].to_numpy()[:20, None]
    np.testing.assert_allclose(
        np.log1p(counts / library * trained.target_sum), expression, rtol=1e-4, atol=1e-5
    )


def test_unknown_loss_and_parameter_list_the_valid_ones(adata):
    with pytest.raises(ValueError, match="valid losses are: mse, cosine, cosine_embedding"):
        scae.Autoencoder(adata, "cosin")
    with pytest.raises(ValueError, match="its parameters are: margin, negatives_per_cell"):
        scae.Autoencoder(adata, "cosine_embedding", {"margn": 0.5})


@pytest.mark.parametrize(
    "loss, params, message",
    [
        ("nb", {"dispersion": "cell"}, "dispersion='cell'; choose one of: gene, gene-cell"),
        (
            "cosine_embedding",
            {"negative_sampling": "labels"},
            "negative_sampling='labels'; choose one of: random, label, cluster",
        ),
        ("cosine_embedding", {"margin": 1.5}, "margin=1.5; it must be >= -1 and <= 1"),
        ("cosine_embedding", {"negatives_per_cell": 0}, "negatives_per_cell=0; it must be >= 1"),
        (
            "cosine_embedding",
            {"negatives_per_cell": 2.5},
            "negatives_per_cell=2.5; it takes an integer",
        ),
        ("mse_cosine", {"alpha": "0.5"}, "alpha='0.5'; it takes a number"),
        ("mse_cosine", {"alpha": True}, "it takes a number"),
    ],
)
def test_out_of_range_parameters_name_what_is_valid(adata, loss, params, message):
    """As the workflow's schema would: a mistyped choice no longer trains silently as another
    (dispersion 'cell' was the per-cell head, sampling 'labels' random negatives)."""
    with pytest.raises(ValueError, match=message):
        scae.Autoencoder(adata, loss, params)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"batch_size": 0}, "train.batch_size=0; it must be >= 2"),
        ({"batch_size": 1}, "train.batch_size=1; it must be >= 2"),  # batch norm needs 2 cells
        ({"max_epochs": 0}, "train.max_epochs=0; it must be >= 1"),
        ({"patience": 0}, "train.patience=0; it must be >= 1"),
        ({"learning_rate": 0}, "train.learning_rate=0; it must be > 0"),
        ({"learning_rate": -1e-3}, "train.learning_rate=-0.001; it must be > 0"),
        ({"lr_factor": 1.0}, "train.lr_factor=1.0; it must be > 0 and < 1"),
        ({"batch_size": 12.5}, "train.batch_size=12.5; it takes an integer"),
        ({"max_epochs": True}, "train.max_epochs=True; it takes an integer"),
    ],
)
def test_training_settings_the_schema_refuses_are_refused_before_any_work(
    trained, settings, message
):
    """They failed deep in training (ZeroDivisionError, a None state dict, batch norm's
    "more than 1 value per channel") or, a negative learning rate, trained uphill silently."""
    before = trained.get_latent_representation()
    with pytest.raises(InputError, match=re.escape(message)):
        trained.train(**settings)
    np.testing.assert_array_equal(trained.get_latent_representation(), before)  # untouched


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"hidden": (256, 0)}, "model.hidden[]=0; it must be >= 1"),
        ({"latent_dim": 0}, "model.latent_dim=0; it must be >= 1"),
        ({"dropout": 1.0}, "model.dropout=1.0; it must be >= 0 and < 1"),
    ],
)
def test_architectures_the_schema_refuses_are_refused(adata, settings, message):
    with pytest.raises(InputError, match=re.escape(message)):
        scae.Autoencoder(adata, "mse", **settings)


def test_range_check_reads_the_schema_keywords_as_json_schema_does():
    for value, limits, ok in [
        (0, {"minimum": 0}, True),
        (0, {"exclusiveMinimum": 0}, False),
        (1, {"maximum": 1}, True),
        (1, {"exclusiveMaximum": 1}, False),
        (0.5, {"exclusiveMinimum": 0, "exclusiveMaximum": 1}, True),
        (np.int64(3), {"minimum": 2}, True),
        (2, {"minimum": 2.5}, False),
    ]:
        if ok:
            check_number("x", value, limits, integer=False)
        else:
            with pytest.raises(InputError, match="it must be"):
                check_number("x", value, limits, integer=False)


def test_parameters_on_their_bounds_are_valid(adata):
    for loss, params in [
        ("cosine_embedding", {"margin": -1.0, "negatives_per_cell": 1}),
        ("mse_cosine", {"alpha": 1}),
        ("nb", {"dispersion": "gene-cell"}),
    ]:
        assert scae.Autoencoder(adata, loss, params).loss_params.items() >= params.items()


def test_wrong_layers_are_named(adata):
    logged = adata.copy()
    logged.layers["lognorm"] = logged.X.copy()
    with pytest.raises(InputError, match="layer 'missing' is not in adata.layers"):
        scae.Autoencoder.setup_anndata(logged, layer="missing")
    with pytest.warns(UserWarning, match="non-integer values"):
        scae.Autoencoder.setup_anndata(logged, layer="lognorm")
    with pytest.raises(
        InputError,
        match=r"adata.layers\['lognorm'\].*is not raw counts.*"
        r"pass layer= the layer holding raw UMI counts",
    ):
        scae.Autoencoder(logged, "nb")
    negative = adata.copy()
    negative.layers["counts"] = -negative.layers["counts"]
    with pytest.raises(InputError, match="is not raw counts"):
        scae.Autoencoder.setup_anndata(negative)
    unregistered = adata.copy()
    del unregistered.uns["_scae_setup"]
    with pytest.raises(InputError, match="call scae.Autoencoder.setup_anndata"):
        scae.Autoencoder(unregistered, "mse")


def test_label_and_cluster_negatives_need_their_columns(adata):
    no_labels = adata.copy()
    scae.Autoencoder.setup_anndata(no_labels, labels_key=None)
    with pytest.raises(InputError, match="no labels_key was registered"):
        scae.Autoencoder(
            no_labels, "cosine_embedding", {"negative_sampling": "label"}, **SMALL
        ).train(max_epochs=1)
    del no_labels.obs["scae_cluster"]
    with pytest.raises(InputError, match=r"clusters=True"):
        scae.Autoencoder(
            no_labels, "cosine_embedding", {"negative_sampling": "cluster"}, **SMALL
        ).train(max_epochs=1)
    with pytest.raises(InputError, match="labels_key 'celltype' is not a column"):
        scae.Autoencoder.setup_anndata(adata.copy(), labels_key="celltype")


def test_untrained_model_and_other_genes_are_refused(adata, trained):
    with pytest.raises(RuntimeError, match=r"call model.train\(\) first"):
        scae.Autoencoder(adata, "mse").get_latent_representation()
    with pytest.raises(InputError, match=r"subset it to the model's genes"):
        trained.get_latent_representation(adata[:, :50].copy())


def test_setup_anndata_fills_a_split_from_labels_and_moments_from_training_cells():
    counts = pbmc_subset(300)
    adata = ad.AnnData(
        X=sp.csr_matrix(np.log1p(counts.X.toarray())),
        obs=counts.obs.copy(),
        var=counts.var.copy(),
        layers={"counts": counts.X.copy()},
    )
    scae.Autoencoder.setup_anndata(adata, layer="counts", labels_key="cell_type")
    split = adata.obs["split"].astype(str)
    assert set(split) == {"train", "val", "test"}
    train = (split == "train").to_numpy()
    np.testing.assert_allclose(
        adata.var["train_mean"], adata.X[train].mean(axis=0).A1, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(adata.obs["library_size"], counts.X.sum(axis=1).A1)
    assert adata.uns["_scae_setup"]["target_sum"] == 1e4


def test_duplicate_cell_names_are_made_unique_with_a_count():
    half = pbmc_subset(200)
    merged = ad.concat([half, half])  # two samples, same barcodes
    with pytest.warns(UserWarning, match="dataset 'adata': 200 duplicate cell names made unique"):
        pre = scae.preprocess(merged, scae.PreprocessParams(n_top_genes=100))
    assert pre.obs_names.is_unique
    registered = merged.copy()
    registered.layers["counts"] = registered.X
    with pytest.warns(UserWarning, match="200 duplicate cell names"):
        scae.Autoencoder.setup_anndata(registered)
    assert registered.obs_names.is_unique


def test_the_package_reads_its_defaults_from_the_workflows_schema(tmp_path):
    """The schema the API's defaults come from is config/schema.yaml, in a built wheel too."""
    from importlib.resources import files

    schema = (REPO / "config/schema.yaml").read_text()
    assert files("scae").joinpath("schema.yaml").read_text() == schema
    source = tmp_path / "source"  # a copy, so that building leaves no build/ in the checkout
    shutil.copytree(REPO / "scae", source / "scae", symlinks=True, ignore=_PYCACHE)
    (source / "config").mkdir()
    for name in ("pyproject.toml", "README.md", "config/schema.yaml"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("scae-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("scae/schema.yaml").decode() == schema


def test_api_defaults_are_the_schemas():
    """One source of defaults: the schema the workflow validates against and the API agree."""
    import inspect

    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())["properties"]

    def limits(properties: dict) -> dict:
        found = {k: {kw: v[kw] for kw in RANGE_KEYWORDS if kw in v} for k, v in properties.items()}
        return {k: v for k, v in found.items() if v}

    def defaults(section: str) -> dict:
        return {k: v["default"] for k, v in schema[section]["properties"].items() if "default" in v}

    init = inspect.signature(scae.Autoencoder).parameters
    model = defaults("model")
    # the workflow's ranks: several latent_dim values are several models, one reference
    assert model.pop("reference_rank") is None
    assert {k: init[k].default for k in model} == {**model, "hidden": tuple(model["hidden"])}
    train = inspect.signature(scae.Autoencoder.train).parameters
    # threads and how models group into jobs are the workflow's; a stack's size is the API's
    # train_stacked's
    grouping = {"threads", "models_per_job", "stack_size"}
    assert {k: train[k].default for k in defaults("train") if k not in grouping} == {
        k: v for k, v in defaults("train").items() if k not in grouping
    }
    stacked = inspect.signature(scae.Autoencoder.train_stacked).parameters
    assert stacked["stack_size"].default == defaults("train")["stack_size"]
    assert vars(scae.PreprocessParams()) == defaults("preprocess")
    mcv = defaults("mcv")
    assert vars(scae.MCVParams()) == {k: mcv[k] for k in ("train_fraction", "seed")}
    loss_schema = schema["loss_params"]["properties"]
    for name, spec in LOSSES.items():
        declared = loss_schema.get(name, {}).get("properties", {})
        assert spec.defaults == {k: v["default"] for k, v in declared.items()}, name
        assert spec.choices == {k: tuple(v["enum"]) for k, v in declared.items() if "enum" in v}, (
            name
        )
        assert spec.limits == limits(declared), name
    train_limits = limits(schema["train"]["properties"])
    assert train_limits.pop("threads") == {"minimum": 1}  # the job's, not the optimiser's
    assert train_limits.pop("checkpoint_interval") == {"minimum": 0}  # the job's too
    assert train_limits.pop("stack_size") == {"minimum": 0}  # so is how it groups models
    assert TrainParams.LIMITS == train_limits
    model = dict(schema["model"]["properties"])  # hidden's limits are its items'
    del model["reference_rank"]  # the workflow's, not the model's
    model["latent_dim"] = model["latent_dim"]["oneOf"][0]  # one rank (the other: a list)
    assert model["latent_dim"]["type"] == "integer"
    assert ModelParams.LIMITS == {**limits(model), **limits({"hidden": model["hidden"]["items"]})}
    dataset = schema["datasets"]["additionalProperties"]
    assert dataset["$ref"] == "#/definitions/dataset"
    mito = yaml.safe_load((REPO / "config/schema.yaml").read_text())["definitions"]["dataset"]
    assert (
        inspect.signature(scae.preprocess).parameters["mito_prefix"].default
        == (mito["properties"]["mito_prefix"]["default"])
    )


def test_training_imports_neither_scanpy_nor_sklearn():
    """The train job's env (envs/torch.yaml) has no scanpy, and sklearn only for the PCA path
    (model.pca_path): importing training loads neither."""
    code = (
        "import sys; from scae import Autoencoder; import scae.outputs, scae.io, "
        "scae.train; print([m for m in ('scanpy', 'sklearn') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    scripts = (REPO / "scripts/train.py").read_text()
    assert "scanpy" not in scripts and "sklearn" not in scripts


def test_the_model_api_loads_optuna_only_for_tuning():
    """scae.train leaves its tuning module (and optuna, ~0.3 s) to whoever tunes."""
    code = (
        "import sys; from scae import Autoencoder; import scae.train; "
        "before = 'optuna' in sys.modules; import scae.train.tune; "
        "print(before, 'optuna' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "True"]


def test_a_pca_path_model_saves_loads_and_records_the_recipe(adata, tmp_path):
    model = scae.Autoencoder(adata, "mse", **SMALL, pca_path=True)
    model.train(max_epochs=3, batch_size=64, ema_decay=0.9)
    assert model.settings["pca_path"] is True
    model.save(tmp_path / "m")
    loaded = scae.Autoencoder.load(tmp_path / "m", adata.copy(), device="cpu")
    assert loaded.module_params.pca_path
    np.testing.assert_array_equal(
        loaded.get_reconstruction(indices=np.arange(20)),
        model.get_reconstruction(indices=np.arange(20)),
    )
