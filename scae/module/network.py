"""The MLP autoencoder shared by every loss; only the decoder's output head differs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .. import _schema
from ..config import check_number
from .batch import DecoderOutput
from .losses import Dispersion, OutputKind

#: log θ is clipped to this range: θ = e^15 is Poisson for all practical purposes and
#: θ = e^-10 an extreme overdispersion; outside it lgamma loses precision.
LOG_THETA_RANGE = (-10.0, 15.0)


_DEFAULTS = _schema.defaults("model")


@dataclass(frozen=True)
class ModelParams:
    """Architecture, mirroring ``config['model']`` (defaults from its schema) and the loss."""

    n_genes: int
    hidden: tuple[int, ...] = _DEFAULTS["hidden"]
    latent_dim: int = _DEFAULTS["latent_dim"]
    dropout: float = _DEFAULTS["dropout"]
    batch_norm: bool = _DEFAULTS["batch_norm"]
    pca_path: bool = _DEFAULTS["pca_path"]
    output: OutputKind = "expression"
    dispersion: Dispersion = "gene"

    #: The limits of ``config/schema.yaml``'s model section (a limit on ``hidden`` holds for
    #: each of its layer widths), less ``reference_rank``, the workflow's.
    LIMITS: ClassVar[dict[str, dict[str, float]]] = {
        key: bounds for key, bounds in _schema.limits("model").items() if key != "reference_rank"
    }

    def __post_init__(self):
        """Check the architecture against :attr:`LIMITS` (an error names the config key)."""
        for width in self.hidden:
            check_number("model.hidden[]", width, self.LIMITS["hidden"], integer=True)
        check_number("model.latent_dim", self.latent_dim, self.LIMITS["latent_dim"], integer=True)
        check_number("model.dropout", self.dropout, self.LIMITS["dropout"], integer=False)

    def to_dict(self) -> dict:
        """Return the parameters as a plain dict (``hidden`` a list), as checkpoints store them."""
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, values: dict) -> ModelParams:
        """Rebuild the parameters from :meth:`to_dict`'s output."""
        return cls(**{**values, "hidden": tuple(values["hidden"])})


def _mlp(sizes: list[int], dropout: float, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers.append(nn.Linear(n_in, n_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(n_out))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


#: With ``pca_path``, a count head's PCA term is log(max(expm1(r), floor)): r, the PCA path's
#: log-normalized expression, can be ≤ 0 where PCA predicts (almost) nothing.
PCA_PATH_FLOOR = 1e-3


class PcaPath(nn.Module):
    """A frozen rank-k PCA as the linear path of an autoencoder: buffers, never trained.

    Encoder term V(x − c) (k × G ``encoder_weight`` V, ``encoder_bias`` −Vc); decoder term
    r = Wz + b (G × k ``decoder_weight``, G ``decoder_bias``), in the space the head predicts
    in (:func:`scae.train.recipes.pca_path` fills them from the training cells).
    """

    def __init__(self, n_genes: int, rank: int):
        super().__init__()
        for name, shape in (
            ("encoder_weight", (rank, n_genes)),
            ("encoder_bias", (rank,)),
            ("decoder_weight", (n_genes, rank)),
            ("decoder_bias", (n_genes,)),
        ):
            self.register_buffer(name, torch.zeros(shape))


class AutoencoderModule(nn.Module):
    """x → encoder MLP → z (linear, ``latent_dim``) → decoder MLP (mirrored) → head.

    Heads: ``expression`` – linear x̂; count heads – μ = softmax(W h)·ℓ with ℓ the cell's
    library size (as DCA and scVI), θ per gene (a learnt vector) or per gene and cell (a
    linear head), and for ``zinb`` a linear head of dropout logits.

    With ``pca_path``, a frozen PCA-k (:class:`PcaPath`) carries x to z and z to the output,
    and the network learns a residual on it: z = V(x − c) + f(x), and the head's output
    (x̂, or a count head's logits) is r + g(z) for ``expression`` and log max(e^r − 1, floor)
    + g(z) for the count heads, r = Wz + b. :meth:`load_pca_path` zeroes the residual's last
    layers, so training starts from PCA's reconstruction.
    """

    def __init__(self, params: ModelParams):
        super().__init__()
        self.params = params
        hidden = list(params.hidden)
        self.encoder = _mlp([params.n_genes, *hidden], params.dropout, params.batch_norm)
        self.to_latent = nn.Linear(hidden[-1] if hidden else params.n_genes, params.latent_dim)
        decoder_sizes = [params.latent_dim, *reversed(hidden)]
        self.decoder = _mlp(decoder_sizes, params.dropout, params.batch_norm)
        width = decoder_sizes[-1]
        self.head = nn.Linear(width, params.n_genes)
        if params.output in ("nb", "zinb"):
            if params.dispersion == "gene":
                self.log_theta = nn.Parameter(torch.zeros(params.n_genes))
            else:
                self.log_theta_head = nn.Linear(width, params.n_genes)
        if params.output == "zinb":
            self.dropout_head = nn.Linear(width, params.n_genes)
        if params.pca_path:
            self.pca_path = PcaPath(params.n_genes, params.latent_dim)

    @torch.no_grad()
    def load_pca_path(self, weights: dict[str, Tensor]) -> None:
        """Set the PCA path's buffers to ``weights`` and zero the residual's last layers.

        The latent projection and the head then start at 0: the module computes PCA-k's
        scores and reconstruction, and gradients reach the rest through those layers' weights.
        """
        for name, value in weights.items():
            getattr(self.pca_path, name).copy_(value)
        for layer in (self.to_latent, self.head):
            layer.weight.zero_()
            layer.bias.zero_()

    def encode(self, x: Tensor) -> Tensor:
        """Map model inputs ``x`` (cells × genes) to latent codes z (cells × ``latent_dim``)."""
        z = self.to_latent(self.encoder(x))
        if self.params.pca_path:
            z = z + pca_term(x, self.pca_path.encoder_weight, self.pca_path.encoder_bias)
        return z

    def decode(self, z: Tensor, library: Tensor | None = None) -> DecoderOutput:
        """Map latent codes ``z`` to the head's output.

        Parameters
        ----------
        z
            Latent codes, cells × ``latent_dim``.
        library
            Each cell's library size ℓ; required by the count heads (μ = softmax(W h)·ℓ),
            unused by the ``expression`` head.

        Returns
        -------
        DecoderOutput
            ``expression`` for the expression head; ``mu``, and ``theta`` (``nb``, ``zinb``)
            and ``dropout_logits`` (``zinb``) for the count heads.

        Raises
        ------
        ValueError
            When a count head is given no ``library``.
        """
        h = self.decoder(z)
        logits = self.head(h)
        if self.params.pca_path:
            path = self.pca_path
            logits = logits + pca_term(
                z, path.decoder_weight, path.decoder_bias, self.params.output != "expression"
            )
        if self.params.output == "expression":
            return DecoderOutput(expression=logits)
        if library is None:
            raise ValueError("count heads need each cell's library size")
        out = DecoderOutput(mu=torch.softmax(logits, dim=-1) * library[:, None])
        if self.params.output in ("nb", "zinb"):
            log_theta = (
                self.log_theta if self.params.dispersion == "gene" else self.log_theta_head(h)
            )
            out.theta = log_theta.clamp(*LOG_THETA_RANGE).exp()
        if self.params.output == "zinb":
            out.dropout_logits = self.dropout_head(h)
        return out

    def forward(self, x: Tensor, library: Tensor | None = None) -> DecoderOutput:
        """Encode ``x`` and decode its latent codes: :meth:`decode` of :meth:`encode`."""
        return self.decode(self.encode(x), library)


def pca_term(x: Tensor, weight: Tensor, bias: Tensor, counts: bool = False) -> Tensor:
    """Return the PCA path's term r = F.linear(x, weight, bias).

    For a count head's logits (``counts``): log max(e^r − 1, :data:`PCA_PATH_FLOOR`), r's
    log-normalized expression as log proportions.
    """
    r = torch.nn.functional.linear(x, weight, bias)
    return torch.log(torch.expm1(r).clamp_min(PCA_PATH_FLOOR)) if counts else r
