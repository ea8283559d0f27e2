"""Amortized guides q(z | x): one encoder network serves every datum (Kingma & Welling 2014).

- :class:`AmortizedNormal`: q(z | x) = N(g(x), diag h(x)²), ``h = softplus + min_scale``.
- :class:`AmortizedDelta`: q(z | x) = δ(z - g(x)), a point estimate. With the VAE model it trains
  a deterministic autoencoder with an N(0, I) penalty on the codes (MAP); with ``beta=0`` in
  :func:`pyro_vae.fit`, the plain autoencoder.
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
from pyro_vae.nets import build_encoder


class _AmortizedGuide(PyroModule):
    outputs_per_latent = 1

    def __init__(self, encoder: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.latent_dim = latent_dim

    @classmethod
    def build(
        cls, x_shape: Sequence[int], latent_dim: int = 10, hidden: Sequence[int] = (400,), arch: str = "mlp", **options
    ):
        """A guide with a stock encoder (``"mlp"`` or ``"conv"``), ``hidden`` from the input inwards."""
        return cls(build_encoder(arch, x_shape, hidden, cls.outputs_per_latent * latent_dim), latent_dim, **options)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z | x), batched over the leading dimensions of ``x``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        if size is None:
            size = x.shape[0]
        posterior = self.posterior(x)  # outside the plate: its parameter statements need not pass through it
        with pyro.plate("data", size, subsample=x):
            return pyro.sample("z", posterior)


class AmortizedNormal(_AmortizedGuide):
    """q(z | x) = N(g(x), diag h(x)²) with ``h = softplus(raw) + min_scale``.

    :param encoder: maps ``[..., *x_shape]`` to ``[..., 2 * latent_dim]`` (location, raw scale).
    :param float min_scale: floor on the posterior scale.
    """

    outputs_per_latent = 2

    def __init__(self, encoder: nn.Module, latent_dim: int, min_scale: float = 1e-4) -> None:
        super().__init__(encoder, latent_dim)
        self.min_scale = min_scale

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        loc, raw_scale = self.encoder(x).split(self.latent_dim, dim=-1)
        return ReparameterizedNormal(loc, softplus(raw_scale) + self.min_scale).to_event(1)


class AmortizedDelta(_AmortizedGuide):
    """q(z | x) = δ(z - g(x)): the deterministic encoder of a plain autoencoder.

    :param encoder: maps ``[..., *x_shape]`` to ``[..., latent_dim]``.
    """

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        return dist.Delta(self.encoder(x), event_dim=1)
