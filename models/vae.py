"""The variational autoencoder's generative model p(z) p(x | z) (Kingma & Welling 2014).

.. math::

    z \\sim \\mathcal N(0, I), \\qquad x \\sim p_\\theta(x \\mid z) = \\mathrm{likelihood}(\\mathrm{decoder}(z)).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.distributions import StandardNormal
from pyro_vae.likelihoods import Likelihood, get_likelihood
from pyro_vae.nets import build_decoder


class VAE(PyroModule):
    """The generative half of a VAE, as a Pyro model.

    ``forward(x, y=None, size=None)`` follows the pyro_vae convention: the latent site ``"z"`` and
    the observed site ``"x"`` live in ``pyro.plate("data", size, subsample=x)``. With ``x=None``
    it draws ``size`` new data: ``model(None, size=16)``.

    :param decoder: maps ``[..., latent_dim]`` to raw likelihood parameters
        ``[..., likelihood.params_per_value, *x_shape]``.
    :param likelihood: turns those parameters into p(x | z).
    :param int latent_dim: dimension of z.
    """

    def __init__(self, decoder: nn.Module, likelihood: Likelihood, latent_dim: int) -> None:
        super().__init__()
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.register_buffer("prior_loc", torch.zeros(latent_dim))

    @classmethod
    def build(
        cls,
        x_shape: Sequence[int],
        latent_dim: int = 10,
        hidden: Sequence[int] = (400,),
        arch: str = "mlp",
        likelihood: str = "bernoulli",
        **likelihood_options: float,
    ) -> VAE:
        """A VAE with a stock decoder: ``arch`` is ``"mlp"`` or ``"conv"`` (DCGAN-style), ``hidden``
        the encoder's layer widths or channels from the input inwards (the decoder mirrors them)."""
        family = get_likelihood(likelihood, len(x_shape), **likelihood_options)
        decoder = build_decoder(arch, latent_dim, hidden, x_shape, family.params_per_value)
        return cls(decoder, family, latent_dim)

    def prior(self) -> dist.TorchDistribution:
        return StandardNormal(self.prior_loc).to_event(1)

    def observation(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z)."""
        return self.likelihood(self.decoder(z))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z): what an image of z shows."""
        return self.likelihood.mean(self.decoder(z))

    def forward(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, size: int | None = None):
        if size is None:
            if x is None:
                raise ValueError("pass data x, or size= the number of samples to draw")
            size = x.shape[0]
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.observation(z), obs=x)
