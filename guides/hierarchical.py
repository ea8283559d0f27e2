"""The top-down guide of a hierarchical VAE (Sønderby et al. 2016; Vahdat & Kautz 2020).

A deterministic bottom-up pass turns x into features d_1, ..., d_L (d_1 nearest the data);
inference then runs top-down, in the model's own order, along the model's own path:

.. math::

    q(z_L \\mid x) = \\mathcal N(\\mu(d_L), \\operatorname{diag} \\sigma(d_L)^2), \\qquad
    q(z_l \\mid z_{>l}, x) = \\mathcal N\\big(\\mu_l + \\Delta\\mu_l,\\;
        \\operatorname{diag} (\\sigma_l \\cdot \\Delta\\sigma_l)^2\\big),

with :math:`\\mu_l, \\sigma_l` the parameters of the model's prior p(z_l | z_{>l}) and
:math:`(\\Delta\\mu_l, \\Delta\\sigma_l)` from d_l and the model's top-down state h_{l+1}: NVAE's
residual parameterization, under which the KL term of a layer measures only how far the data move
its posterior from its prior. The prior's parameters and the states come from the model's
:meth:`~pyro_vae.models.HierarchicalVAE.prior_parameters` and
:meth:`~pyro_vae.models.HierarchicalVAE.lift`, which the guide holds as bound methods: the model
owns those networks (see :mod:`pyro_vae.models.hierarchical` for what that means for the
parameter store, checkpoints and copies).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.distributions import ReparameterizedNormal
from pyro_vae.models.hierarchical import HierarchicalVAE, site_name
from pyro_vae.nets import MLP, build_encoder, concat_features


class TopDownGuide(PyroModule):
    """q(z_L | x) ∏_{l<L} q(z_l | z_{>l}, x), sampled top-down through the model's path.

    :param encoder: maps ``[..., *x_shape]`` to the first bottom-up features ``[..., width]``.
    :param ups: ``L - 1`` networks ``[..., width] -> [..., width]``; d_{l+1} = d_l + up_l(d_l).
    :param top: maps d_L to ``[..., 2 * latent_dims[-1]]`` (location, raw scale of q(z_L | x)).
    :param corrections: one network per layer below the top, from the bottom up, mapping
        ``[..., 2 * width]`` (d_l, then the model's state h_{l+1}) to ``[..., 2 * latent_dims[l]]``
        (Δμ_l, raw Δσ_l with Δσ_l = softplus(raw)).
    :param latent_dims: the sizes of z_1, ..., z_L, as in the model.
    :param prior_parameters: the model's :meth:`~pyro_vae.models.HierarchicalVAE.prior_parameters`.
    :param lift: the model's :meth:`~pyro_vae.models.HierarchicalVAE.lift`.
    :param float min_scale: floor on every posterior scale.
    """

    def __init__(
        self,
        encoder: nn.Module,
        ups: nn.ModuleList,
        top: nn.Module,
        corrections: nn.ModuleList,
        latent_dims: Sequence[int],
        prior_parameters: Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        lift: Callable[..., torch.Tensor],
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.latent_dims = tuple(latent_dims)
        self.layers = len(self.latent_dims)
        if len(ups) != self.layers - 1 or len(corrections) != self.layers - 1:
            raise ValueError(
                f"{self.layers} layers need {self.layers - 1} ups and corrections, "
                f"got {len(ups)} and {len(corrections)}"
            )
        self.latent_dim = self.latent_dims[-1]
        self.encoder = encoder
        self.ups = ups
        self.top = top
        self.corrections = corrections
        self.prior_parameters = prior_parameters
        self.lift = lift
        self.min_scale = min_scale

    @classmethod
    def build_for(
        cls,
        model: HierarchicalVAE,
        x_shape: Sequence[int],
        hidden: Sequence[int] = (400,),
        arch: str = "mlp",
        min_scale: float = 1e-4,
    ) -> TopDownGuide:
        """The guide of ``model`` with a stock encoder (``"mlp"`` or ``"conv"``, ``hidden`` from
        the input inwards, as for :meth:`AmortizedNormal.build <pyro_vae.guides.AmortizedNormal.build>`)
        to the model's state width, sharing the model's top-down path."""
        width, sizes = model.width, model.latent_dims
        return cls(
            build_encoder(arch, x_shape, hidden, width),
            nn.ModuleList(MLP(width, (width,), width) for _ in sizes[1:]),
            MLP(width, (), 2 * sizes[-1]),
            nn.ModuleList(MLP(2 * width, (width,), 2 * size) for size in sizes[:-1]),
            sizes,
            model.prior_parameters,
            model.lift,
            min_scale,
        )

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The bottom-up features d_1, ..., d_L of ``x``."""
        features = [self.encoder(x)]
        for up in self.ups:
            features.append(features[-1] + up(features[-1]))
        return features

    def _top(self, feature: torch.Tensor) -> dist.TorchDistribution:
        loc, raw_scale = self.top(feature).split(self.latent_dim, dim=-1)
        return ReparameterizedNormal(loc, softplus(raw_scale) + self.min_scale).to_event(1)

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z_L | x), batched over the leading dimensions of ``x``: the top layer's posterior,
        which the VampPrior averages and the single-latent tools encode with."""
        return self._top(self.features(x)[-1])

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        if size is None:
            size = x.shape[0]
        features = self.features(x)
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample(site_name(self.layers, self.layers), self._top(features[-1]))
            state = self.lift(self.layers, z)
            for layer in range(self.layers - 1, 0, -1):
                loc, scale = self.prior_parameters(layer, state)
                shift, raw_ratio = self.corrections[layer - 1](concat_features(features[layer - 1], state)).split(
                    self.latent_dims[layer - 1], dim=-1
                )
                posterior = ReparameterizedNormal(loc + shift, scale * softplus(raw_ratio) + self.min_scale)
                z = pyro.sample(site_name(layer, self.layers), posterior.to_event(1))
                state = self.lift(layer, z, state)
        return z
