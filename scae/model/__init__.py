"""The user's model class, in scvi-tools' conventions: :class:`Autoencoder`."""

from .autoencoder import Autoencoder

__all__ = ["Autoencoder"]
