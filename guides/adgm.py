"""The guide of the auxiliary deep generative model (Maaløe et al. 2016):
q(a | x) q(y | a, x) q(z | a, y, x).

The auxiliary latent ``a`` is drawn first; the classifier and the posterior of ``z`` see it beside
the datum. Where a label is missing, q(y | a, x) proposes it, marked for parallel enumeration, so
``TraceEnum_ELBO`` sums over every class exactly (as :class:`~pyro_vae.guides.ConditionalNormal`
does for M2). The classifier to predict with is q(y | x) = E_q(a|x)[q(y | a, x)]
(:meth:`AuxiliaryNormal.label_posterior`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.distributions import ReparameterizedNormal
from pyro_vae.guides.conditional import CLASSIFIER_DEFAULTS, propose_missing_labels
from pyro_vae.nets import MLP, LabelEncoding, build_encoder, concat_features

FEATURES = 256


class AuxiliaryClassifier(nn.Module):
    """The logits of q(y | a, x): features of the datum, then a head on them and ``a``."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.head(concat_features(self.features(x), a))


class AuxiliaryNormal(PyroModule):
    """q(a | x) = N(·), q(y | a, x) = Categorical(·), q(z | a, y, x) = N(·), each a network of the
    datum's features and the variables drawn before it.

    :param auxiliary_encoder: maps ``[..., *x_shape]`` to ``[..., 2 * auxiliary_dim]`` (q(a | x)).
    :param classifier: q(y | a, x)'s logits; give the model the same module
        (``model.classifier = guide.classifier``) for the auxiliary classification term.
    :param features: maps ``[..., *x_shape]`` to ``[..., F]`` for q(z | a, y, x).
    :param head: maps ``[..., F + label_dim + auxiliary_dim]`` to ``[..., 2 * latent_dim]``.
    :param labels: the label encoding.
    """

    def __init__(
        self,
        auxiliary_encoder: nn.Module,
        classifier: AuxiliaryClassifier,
        features: nn.Module,
        head: nn.Module,
        labels: LabelEncoding,
        latent_dim: int,
        auxiliary_dim: int,
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.auxiliary_encoder = auxiliary_encoder
        self.classifier = classifier
        self.features = features
        self.head = head
        self.label_features = labels
        self.latent_dim = latent_dim
        self.auxiliary_dim = auxiliary_dim
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
        auxiliary_dim: int = 10,
        classifier_arch: str | None = None,
        classifier_hidden: Sequence[int] | None = None,
    ) -> AuxiliaryNormal:
        """A guide with stock networks, as :meth:`ConditionalNormal.build
        <pyro_vae.guides.ConditionalNormal.build>` makes them, and q(a | x) of the same encoder."""
        labels = LabelEncoding(num_classes, embedding_dim)
        classifier_arch = classifier_arch or arch
        if classifier_hidden is None:
            classifier_hidden = hidden if classifier_arch == arch else CLASSIFIER_DEFAULTS[classifier_arch]
        return cls(
            build_encoder(arch, x_shape, hidden, 2 * auxiliary_dim),
            AuxiliaryClassifier(
                nn.Sequential(build_encoder(classifier_arch, x_shape, classifier_hidden, FEATURES), nn.ReLU()),
                MLP(FEATURES + auxiliary_dim, [FEATURES], num_classes),
            ),
            nn.Sequential(build_encoder(arch, x_shape, hidden, FEATURES), nn.ReLU()),
            MLP(FEATURES + labels.dim + auxiliary_dim, [FEATURES], 2 * latent_dim),
            labels,
            latent_dim,
            auxiliary_dim,
        )

    def auxiliary_posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(a | x)."""
        loc, raw_scale = self.auxiliary_encoder(x).split(self.auxiliary_dim, dim=-1)
        return ReparameterizedNormal(loc, softplus(raw_scale) + self.min_scale).to_event(1)

    def label_posterior(self, x: torch.Tensor, num_samples: int = 0) -> dist.Categorical:
        """q(y | x) = E_q(a|x)[q(y | a, x)]: averaged over ``num_samples`` draws of ``a``, or, with
        ``0`` (the default, deterministic), q(y | a, x) at the mean of q(a | x)."""
        posterior = self.auxiliary_posterior(x)
        if num_samples == 0:
            return dist.Categorical(logits=self.classifier(x, posterior.mean))
        probs = self.classifier(x, posterior.sample((num_samples,))).softmax(-1).mean(0)
        return dist.Categorical(probs=probs)

    def posterior(self, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> dist.TorchDistribution:
        """q(z | a, y, x), broadcasting ``y`` (e.g. enumerated labels) against the data."""
        inputs = concat_features(self.features(x), self.label_features(y), a)
        loc, raw_scale = self.head(inputs).split(self.latent_dim, dim=-1)
        return ReparameterizedNormal(loc, softplus(raw_scale) + self.min_scale).to_event(1)

    def _label(self, x: torch.Tensor, a: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        classes = self.label_features.num_classes
        return propose_missing_labels(y, x.shape[0], classes, lambda: dist.Categorical(logits=self.classifier(x, a)))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        if size is None:
            size = x.shape[0]
        with pyro.plate("data", size, subsample=x):
            a = pyro.sample("a", self.auxiliary_posterior(x))
            return pyro.sample("z", self.posterior(x, self._label(x, a, y), a))
