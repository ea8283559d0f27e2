"""The amortized guide of a (semi-supervised) conditional VAE: q(z, y | x) = q(y | x) q(z | x, y).

Where a label is given, only q(z | x, y) is used. Where it is missing, the classifier q(y | x)
proposes it; the site is marked for parallel enumeration, so ``TraceEnum_ELBO`` sums over every
class exactly instead of sampling one (Kingma et al. 2014, "M2"). Under plain tracing (scoring)
the label is sampled from q(y | x) like any other latent variable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.data import MISSING_LABEL
from pyro_vae.distributions import ReparameterizedNormal
from pyro_vae.nets import MLP, LabelEncoding, build_encoder, concat_features
from pyro_vae.validation import check_labels

ENUMERATE = {"enumerate": "parallel"}
CLASSIFIER_DEFAULTS = {"mlp": (500, 500), "conv": (32, 64)}  # when its architecture differs from the encoder's


def propose_missing_labels(
    y: torch.Tensor | None, rows: int, num_classes: int, proposal: Callable[[], dist.Categorical]
) -> torch.Tensor:
    """The labels of a batch of ``rows`` data, the missing ones (all, for ``y=None``; the ``-1``
    entries otherwise) drawn from ``proposal()``, q(y | ...), at a site marked for parallel
    enumeration: ``"y"``, or ``"y_unobserved"`` beside given labels (the model's ``obs_mask`` site)."""
    if y is None:
        return pyro.sample("y", proposal(), infer=ENUMERATE)
    check_labels(y, rows, num_classes, missing=MISSING_LABEL)
    missing = y == MISSING_LABEL
    if not missing.any():
        return y
    with poutine.mask(mask=missing):
        guess = pyro.sample("y_unobserved", proposal(), infer=ENUMERATE)
    return torch.where(missing, guess, y)


class ConditionalNormal(PyroModule):
    """q(y | x) = Categorical(classifier(x)) and q(z | x, y) = N(g(x, y), h(x, y)²).

    :param features: maps ``[..., *x_shape]`` to ``[..., feature_dim]``.
    :param head: maps ``[..., feature_dim + label_dim]`` to ``[..., 2 * latent_dim]``.
    :param classifier: maps ``[..., *x_shape]`` to class logits.
    :param labels: the label encoding.
    :param float min_scale: floor on the posterior scale.
    """

    def __init__(
        self,
        features: nn.Module,
        head: nn.Module,
        classifier: nn.Module,
        labels: LabelEncoding,
        latent_dim: int,
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.classifier = classifier
        self.label_features = labels
        self.latent_dim = latent_dim
        self.min_scale = min_scale

    @classmethod
    def build(
        cls,
        x_shape: Sequence[int],
        num_classes: int,
        latent_dim: int = 10,
        hidden: Sequence[int] = (400,),
        arch: str = "mlp",
        embedding_dim: int | None = None,
        classifier_arch: str | None = None,
        classifier_hidden: Sequence[int] | None = None,
    ) -> ConditionalNormal:
        """A guide with stock networks: ``hidden`` are the encoder's layer widths (``mlp``) or
        channels (``conv``) from the input inwards; the classifier q(y | x) has the same unless
        ``classifier_arch`` and ``classifier_hidden`` say otherwise (a ``conv`` classifier with
        ``(32, 64)`` channels generalizes better from few labels than an MLP)."""
        labels = LabelEncoding(num_classes, embedding_dim)
        feature_dim = 256
        features = nn.Sequential(build_encoder(arch, x_shape, hidden, feature_dim), nn.ReLU())
        head = MLP(feature_dim + labels.dim, [feature_dim], 2 * latent_dim)
        classifier_arch = classifier_arch or arch
        if classifier_hidden is None:
            classifier_hidden = hidden if classifier_arch == arch else CLASSIFIER_DEFAULTS[classifier_arch]
        classifier = build_encoder(classifier_arch, x_shape, classifier_hidden, num_classes)
        return cls(features, head, classifier, labels, latent_dim)

    def label_posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(y | x)."""
        return dist.Categorical(logits=self.classifier(x))

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x, y), broadcasting ``y`` (e.g. enumerated labels) against the data."""
        loc, raw_scale = self.head(concat_features(self.features(x), self.label_features(y))).split(
            self.latent_dim, dim=-1
        )
        return ReparameterizedNormal(loc, softplus(raw_scale) + self.min_scale).to_event(1)

    def _label(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return propose_missing_labels(y, x.shape[0], self.label_features.num_classes, lambda: self.label_posterior(x))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        if size is None:
            size = x.shape[0]
        with pyro.plate("data", size, subsample=x):
            return pyro.sample("z", self.posterior(x, self._label(x, y)))
