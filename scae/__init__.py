"""scae: a comparison of the losses a single-cell autoencoder can train with.

Which loss should a single-cell autoencoder train with? The package holds the logic of the
Snakemake workflow that answers it (data loading and preprocessing, models, losses, training,
metrics, plots); every piece is importable and testable without Snakemake. The public API,
for notebooks::

    scae.preprocess(adata, ...)        # QC, train/val/test split, normalize, HVGs on train
    scae.Autoencoder                   # setup_anndata → Autoencoder(adata, loss) → train()
    scae.LOSSES                        # the registered losses and their default parameters
"""

__version__ = "0.1.0"
__all__ = ["LOSSES", "Autoencoder", "MCVParams", "PreprocessParams", "preprocess"]

#: Public name → the module defining it. Imported on first use, so that ``import scae.config``
#: (Snakemake's parse step, in an env without torch) stays free of torch and scanpy.
_PUBLIC = {
    "Autoencoder": "model",
    "preprocess": "data",
    "PreprocessParams": "data",
    "MCVParams": "data",
    "LOSSES": "module",
}


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'scae' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
