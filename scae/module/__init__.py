"""The network every loss trains (:class:`AutoencoderModule`) and the losses' registry.

As in scvi-tools, a *module* is the ``torch.nn.Module``; the user's model class, which owns
the AnnData and the training, is :class:`scae.model.Autoencoder`.
"""

from .losses import LOSSES, LossSpec, get_loss, register_loss
from .network import AutoencoderModule, ModelParams

__all__ = ["LOSSES", "AutoencoderModule", "LossSpec", "ModelParams", "get_loss", "register_loss"]
