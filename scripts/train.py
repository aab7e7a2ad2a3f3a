"""Snakemake entry point: train one autoencoder for a dataset × loss × seed, then write its
embedding of every cell and its reconstructions of the test cells."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821
import anndata as ad
import torch

from scae.config import CLUSTER_KEY
from scae.io import atomic_path, rule_logging
from scae.losses import get_loss
from scae.model import ModelParams
from scae.outputs import write_run_outputs
from scae.train import (
    CellData,
    TrainParams,
    embed_and_reconstruct,
    fit,
    keep_freed_memory,
    resolve_device,
    save_model,
)

sm = snakemake  # noqa: F821
with rule_logging(sm.log[0]) as log:
    torch.set_num_threads(sm.threads)
    keep_freed_memory()  # minibatch buffers reused, not page-faulted in every step
    spec = get_loss(sm.wildcards.loss)
    loss_params = dict(sm.params.loss_params)
    model_config = dict(sm.params.model)
    adata = ad.read_h5ad(sm.input[0])
    sampling = loss_params.get("negative_sampling", "random")
    label_key = sm.params.label_key if sm.params.label_key in adata.obs else None
    group_key = {"random": None, "label": label_key, "cluster": CLUSTER_KEY}[sampling]
    if sampling == "label" and group_key is None:
        raise ValueError(
            f"loss_params.cosine_embedding.negative_sampling is 'label' but dataset "
            f"{sm.wildcards.dataset!r} has no label_key column; use 'random' or 'cluster', "
            "or set label_key"
        )
    data = CellData(adata, model_config.pop("input_scaling"), group_key=group_key)
    device = resolve_device(sm.params.train["device"])
    log.info("training %s seed %s on %s with %d threads", spec.name, sm.wildcards.seed,
             device, sm.threads)
    model_params = ModelParams(
        n_genes=data.n_genes, output=spec.output,
        dispersion=loss_params.get("dispersion", "gene"),
        **{**model_config, "hidden": tuple(model_config["hidden"])},
    )
    train = {k: v for k, v in sm.params.train.items() if k not in ("threads", "device")}
    result = fit(data, spec, loss_params, model_params, TrainParams(**train),
                 seed=int(sm.wildcards.seed), device=device,
                 checkpoint=Path(sm.params.checkpoint))
    with atomic_path(sm.output.history) as tmp:
        result.history.to_csv(tmp, sep="\t", index=False)
    save_model(Path(sm.output.model), result, {
        "loss": spec.name, "loss_params": loss_params, "seed": int(sm.wildcards.seed),
        "input_scaling": data.input_scaling, "var_names": list(adata.var_names),
    })
    test_rows = data.rows("test")  # used only now: training and model selection never saw them
    latent, recon = embed_and_reconstruct(result.model, data, test_rows, device)
    write_run_outputs(adata, test_rows, latent, recon, sm.output.embedding,
                      sm.output.reconstruction,
                      {"model": spec.name, "seed": int(sm.wildcards.seed),
                       "best_epoch": result.best_epoch})
    Path(sm.params.checkpoint).unlink(missing_ok=True)
