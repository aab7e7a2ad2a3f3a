"""scae: which loss should a single-cell autoencoder train with?

The package holds the logic of the Snakemake workflow (data loading and preprocessing,
models, losses, training, metrics, plots); every piece is importable and testable without
Snakemake.
"""

__version__ = "0.1.0"
