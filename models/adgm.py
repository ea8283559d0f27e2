"""The auxiliary deep generative model (ADGM) of Maaløe et al. (2016), "Auxiliary Deep Generative
Models": M2 with an auxiliary latent ``a`` that makes the guide's classifier and posterior richer.

.. math::

    p(y)\\, p(z)\\, p_\\theta(x \\mid y, z)\\, p_\\theta(a \\mid x, y, z), \\qquad
    q_\\phi(a \\mid x)\\, q_\\phi(y \\mid a, x)\\, q_\\phi(z \\mid a, y, x).

Adding p(a | x, y, z) leaves the marginal p(x, y, z) as it is (the density of ``a`` integrates to
one), so the ELBO is still a bound on log p(x), while q(y | x) = E_q(a|x)[q(y | a, x)] and
q(z | x, y) become mixtures over ``a``: the classifier sees the data through the stochastic
features ``a``. The guide is :class:`~pyro_vae.guides.AuxiliaryNormal`; with labels missing,
``TraceEnum_ELBO`` sums ``y`` out exactly, as for :class:`~pyro_vae.models.ConditionalVAE`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.data import MISSING_LABEL
from pyro_vae.likelihoods import Likelihood, get_likelihood
from pyro_vae.models.cvae import ConditionalVAE
from pyro_vae.nets import MLP, LabelEncoding, build_decoder, concat_features


class AuxiliaryDGM(ConditionalVAE):
    """The generative half of the ADGM, as a Pyro model: :class:`ConditionalVAE`'s sites
    ``"z"``, ``"y"`` and ``"x"``, then the auxiliary latent ``"a"`` ~ p(a | x, y, z), all in
    ``pyro.plate("data", size, subsample=x)``.

    :param auxiliary_net: maps ``[..., x_features + label_dim + latent_dim]`` (the flattened datum, the
        label's encoding, z) to ``[..., 2 * auxiliary_dim]``: location and raw scale of p(a | x, y, z).
    :param int auxiliary_dim: dimension of ``a``.
    :param x_shape: the shape of one datum.
    Other parameters as for :class:`ConditionalVAE`. Give it the guide's classifier,
    ``model.classifier, model.alpha = guide.classifier, alpha`` (one module, one set of
    parameters, as for :class:`ConditionalVAE`), and labelled data add ``alpha * log q(y | a, x)``
    at the guide's draw of ``a``, as an auxiliary site.
    """

    def __init__(
        self,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent_dim: int,
        labels: LabelEncoding,
        auxiliary_net: nn.Module,
        auxiliary_dim: int,
        x_shape: Sequence[int],
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__(decoder, likelihood, latent_dim, labels)
        self.auxiliary_net = auxiliary_net
        self.auxiliary_dim = auxiliary_dim
        self.x_shape = tuple(x_shape)
        self.min_scale = min_scale

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
        auxiliary_dim: int = 10,
        **likelihood_options: float,
    ) -> AuxiliaryDGM:
        """An ADGM with stock networks: the decoder as :meth:`ConditionalVAE.build` makes it, and
        an MLP of the ``hidden`` widths for p(a | x, y, z)."""
        family = get_likelihood(likelihood, len(x_shape), **likelihood_options)
        labels = LabelEncoding(num_classes, embedding_dim)
        decoder = build_decoder(arch, latent_dim + labels.dim, hidden, x_shape, family.params_per_value)
        features = int(torch.Size(x_shape).numel())
        auxiliary_net = MLP(features + labels.dim + latent_dim, hidden, 2 * auxiliary_dim)
        return cls(decoder, family, latent_dim, labels, auxiliary_net, auxiliary_dim, x_shape)

    def auxiliary_prior(self, x: torch.Tensor, label: torch.Tensor, z: torch.Tensor) -> dist.TorchDistribution:
        """p(a | x, y, z), broadcasting enumerated labels against the data."""
        inputs = concat_features(x.flatten(-len(self.x_shape)), self.labels(label), z)
        loc, raw_scale = self.auxiliary_net(inputs).split(self.auxiliary_dim, dim=-1)
        return dist.Normal(loc, softplus(raw_scale) + self.min_scale).to_event(1)

    def _auxiliary_classification(self, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> None:
        with poutine.mask(mask=y != MISSING_LABEL), poutine.scale(scale=self.alpha):
            logits = self.classifier(x, a)
            pyro.sample("y_aux", dist.Categorical(logits=logits), obs=y.clamp(min=0), infer={"is_auxiliary": True})

    def forward(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, size: int | None = None):
        if size is None:
            if x is None and y is None:
                raise ValueError("pass data x, labels y, or size= the number of samples to draw")
            size = (x if x is not None else y).shape[0]
        with pyro.plate("data", size, subsample=x if x is not None else y):
            z = pyro.sample("z", self.prior())
            label = self._label(y)
            decoded = pyro.sample("x", self.likelihood(self.decoder(concat_features(z, self.labels(label)))), obs=x)
            a = pyro.sample("a", self.auxiliary_prior(decoded, label, z))
            if self.classifier is not None and self.alpha > 0 and x is not None and y is not None:
                self._auxiliary_classification(x, y, a)
            return decoded
