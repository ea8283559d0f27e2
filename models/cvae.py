"""A conditional VAE with a class label: p(z) p(y) p(x | z, y).

With every label given it is the conditional VAE of Sohn et al. (2015); with some or all labels
missing it is the "M2" model of Kingma et al. (2014), "Semi-supervised learning with deep
generative models": y ~ Categorical(π) is then a latent variable that the guide's classifier
q(y | x) proposes, and that ``TraceEnum_ELBO`` sums out exactly.

Labels may be ``None`` (all missing) or a tensor in which ``-1`` marks a missing label.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.data import MISSING_LABEL
from pyro_vae.distributions import StandardNormal
from pyro_vae.likelihoods import Likelihood, get_likelihood
from pyro_vae.nets import LabelEncoding, build_decoder, concat_features
from pyro_vae.validation import check_labels


class ConditionalVAE(PyroModule):
    """The generative half of a (semi-supervised) conditional VAE, as a Pyro model.

    ``forward(x, y=None, size=None)`` follows the pyro_vae convention. The label site ``"y"`` is
    observed where a label is given; missing labels (``y=None``, or ``-1`` entries) become the
    latent site ``"y"`` (or ``"y_unobserved"`` beside a partly labelled batch, Pyro's
    ``obs_mask``). With ``x=None`` it draws ``size`` data, of the classes in ``y`` if given.

    :param decoder: maps ``[..., latent_dim + label_dim]`` to likelihood parameters.
    :param likelihood: p(x | z, y).
    :param labels: the label encoding shared with the decoder's input.
    :param classifier: optional q(y | x) logits network (the guide's); when given, labelled data
        add ``alpha * log q(y | x)``, the auxiliary classification term of Kingma et al. (2014),
        as an auxiliary site that training counts and scoring leaves out.
    :param float alpha: weight of that term.
    """

    def __init__(
        self,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent_dim: int,
        labels: LabelEncoding,
        classifier: nn.Module | None = None,
        alpha: float = 0.0,
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.labels = labels
        self.classifier = classifier
        self.alpha = alpha
        self.register_buffer("prior_loc", torch.zeros(latent_dim))
        self.register_buffer("class_logits", torch.zeros(labels.num_classes))

    @classmethod
    def build(
        cls,
        x_shape: Sequence[int],
        num_classes: int,
        latent_dim: int = 10,
        hidden: Sequence[int] = (400,),
        arch: str = "mlp",
        likelihood: str = "bernoulli",
        embedding_dim: int | None = None,
        **likelihood_options: float,
    ) -> ConditionalVAE:
        """A conditional VAE with a stock decoder; labels one-hot, or a learned embedding of
        ``embedding_dim`` dimensions."""
        family = get_likelihood(likelihood, len(x_shape), **likelihood_options)
        labels = LabelEncoding(num_classes, embedding_dim)
        decoder = build_decoder(arch, latent_dim + labels.dim, hidden, x_shape, family.params_per_value)
        return cls(decoder, family, latent_dim, labels)

    def prior(self) -> dist.TorchDistribution:
        return StandardNormal(self.prior_loc).to_event(1)

    def label_prior(self) -> dist.TorchDistribution:
        return dist.Categorical(logits=self.class_logits)

    def validate(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Called by :func:`pyro_vae.fit` on the whole training data: labels must be known classes
        or ``-1`` (missing)."""
        if y is not None:
            check_labels(y, x.shape[0], self.labels.num_classes, missing=MISSING_LABEL)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z, y)."""
        return self.likelihood.mean(self.decoder(concat_features(z, self.labels(y))))

    def _label(self, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            return pyro.sample("y", self.label_prior())
        check_labels(y, y.shape[0], self.labels.num_classes, missing=MISSING_LABEL)
        missing = y == MISSING_LABEL
        if missing.any():
            return pyro.sample("y", self.label_prior(), obs=y.clamp(min=0), obs_mask=~missing)
        return pyro.sample("y", self.label_prior(), obs=y)

    def _auxiliary_classification(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with poutine.mask(mask=y != MISSING_LABEL), poutine.scale(scale=self.alpha):
            logits = self.classifier(x)
            pyro.sample("y_aux", dist.Categorical(logits=logits), obs=y.clamp(min=0), infer={"is_auxiliary": True})

    def forward(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, size: int | None = None):
        if size is None:
            if x is None and y is None:
                raise ValueError("pass data x, labels y, or size= the number of samples to draw")
            size = (x if x is not None else y).shape[0]
        with pyro.plate("data", size, subsample=x if x is not None else y):
            z = pyro.sample("z", self.prior())
            label = self._label(y)
            if self.classifier is not None and self.alpha > 0 and x is not None and y is not None:
                self._auxiliary_classification(x, y)
            return pyro.sample("x", self.likelihood(self.decoder(concat_features(z, self.labels(label)))), obs=x)
