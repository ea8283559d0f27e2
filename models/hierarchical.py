"""A hierarchical VAE: L stochastic layers generated top-down (Sønderby et al. 2016, "Ladder
variational autoencoders"; Vahdat & Kautz 2020, "NVAE: a deep hierarchical variational
autoencoder").

.. math::

    z_L \\sim p(z_L), \\qquad
    z_l \\sim \\mathcal N\\big(\\mu_l(h_{l+1}), \\operatorname{diag} \\sigma_l(h_{l+1})^2\\big), \\qquad
    x \\sim \\mathrm{likelihood}(\\mathrm{decoder}(h_1)),

with the deterministic top-down state :math:`h_L = g_L(z_L)`, :math:`h_l = h_{l+1} + g_l(z_l)`
(a residual path, as in NVAE; the stock g_l are linear maps), and :math:`p(z_L)` the standard
Normal or the VampPrior (Tomczak & Welling 2018; :meth:`HierarchicalVAE.use_vampprior`). The
sites are ``"z"`` for the top layer :math:`z_L` and ``"z1"``, ..., ``"z{L-1}"`` below it
(``"z1"`` next to the data), then ``"x"``, all in ``pyro.plate("data", size, subsample=x)``.

Its guide, :class:`~pyro_vae.guides.TopDownGuide`, infers the layers in the same top-down order and
calls this model's :meth:`~HierarchicalVAE.prior_parameters` and :meth:`~HierarchicalVAE.lift`:
the generative path is shared, not copied. The model owns those networks and the decoder; the guide
holds the two bound methods, not the networks, so each top-down parameter has one entry in Pyro's
parameter store and one optimizer state, gets its gradient from the model and the guide, and is
stored in the model's ``state_dict`` only. With the VampPrior the model in turn holds the guide's
:meth:`~pyro_vae.guides.TopDownGuide.posterior` (the pseudo-inputs are the model's), as
:class:`~pyro_vae.models.VampPriorVAE` does. Save and load the two together (as
:func:`pyro_vae.save_checkpoint` does); a ``copy.deepcopy`` of either copies the other along, and
``copy.deepcopy((model, guide))`` gives a pair that shares its path as the original does.

The single-latent tools act on the top layer: :meth:`~HierarchicalVAE.prior` is p(z_L),
:meth:`~HierarchicalVAE.decode` decodes z_L with every layer below it at its conditional prior
mean, and :meth:`~HierarchicalVAE.top_model` is the model with only ``"z"`` random, for
:mod:`pyro_vae.latent` (with ``site="z"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.distributions import DiagonalNormalMixture, StandardNormal
from pyro_vae.likelihoods import Likelihood, get_likelihood
from pyro_vae.models.vampprior import check_pseudo_inputs, vampprior
from pyro_vae.nets import MLP, build_decoder

TOP_SITE = "z"


def site_name(layer: int, layers: int) -> str:
    """The sample site of ``layer`` (1 next to the data, ``layers`` at the top): ``"z"`` at the
    top, where the single-latent tools look, ``"z{layer}"`` below."""
    return TOP_SITE if layer == layers else f"z{layer}"


def layer_sizes(latent_dim: int | Sequence[int], layers: int) -> tuple[int, ...]:
    """Per-layer latent sizes from the bottom up: ``latent_dim`` for every layer, or one size per
    layer."""
    if layers < 2:
        raise ValueError(f"a hierarchical VAE needs at least 2 stochastic layers, got {layers}; for one use VAE")
    sizes = (latent_dim,) * layers if isinstance(latent_dim, int) else tuple(latent_dim)
    if len(sizes) != layers or min(sizes) < 1:
        raise ValueError(f"latent_dim needs one positive size per layer ({layers}), got {latent_dim}")
    return sizes


class HierarchicalVAE(PyroModule):
    """The generative half of a hierarchical VAE, as a Pyro model.

    ``forward(x, y=None, size=None)`` follows the pyro_vae convention (see the module
    docstring for its sites); with ``x=None`` it draws ``size`` new data by ancestral sampling:
    ``model(None, size=16)``.

    :param lifts: one ``nn.Linear`` per layer, from the bottom up, mapping
        ``[..., latent_dims[l]]`` to the top-down state ``[..., width]``: g_l.
    :param priors: one network per layer below the top, from the bottom up, mapping the state
        ``[..., width]`` to ``[..., 2 * latent_dims[l]]`` (location, raw scale of p(z_l | z_{>l})).
    :param decoder: maps the state ``[..., width]`` to raw likelihood parameters
        ``[..., likelihood.params_per_value, *x_shape]``.
    :param likelihood: turns those parameters into p(x | z_1, ..., z_L).
    :param latent_dims: the sizes of z_1, ..., z_L (at least two layers).
    :param float min_scale: floor on the conditional priors' scales, softplus(raw) + min_scale.
    """

    def __init__(
        self,
        lifts: nn.ModuleList,
        priors: nn.ModuleList,
        decoder: nn.Module,
        likelihood: Likelihood,
        latent_dims: Sequence[int],
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.latent_dims = layer_sizes(latent_dims, len(latent_dims))
        self.layers = len(self.latent_dims)
        if len(lifts) != self.layers or len(priors) != self.layers - 1:
            raise ValueError(
                f"{self.layers} layers need {self.layers} lifts and {self.layers - 1} priors, "
                f"got {len(lifts)} and {len(priors)}"
            )
        self.latent_dim = self.latent_dims[-1]  # of the top layer: what prior() draws and decode() takes
        self.lifts = lifts
        self.priors = priors
        self.decoder = decoder
        self.likelihood = likelihood
        self.min_scale = min_scale
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim))
        self.posterior: Callable[[torch.Tensor], dist.TorchDistribution] | None = None
        self.pseudo_inputs: nn.Parameter | None = None
        self.bounds: tuple[float, float] | None = None

    @classmethod
    def build(
        cls,
        x_shape: Sequence[int],
        latent_dim: int | Sequence[int] = 10,
        hidden: Sequence[int] = (400,),
        arch: str = "mlp",
        likelihood: str = "bernoulli",
        layers: int = 2,
        width: int | None = None,
        **likelihood_options: float,
    ) -> HierarchicalVAE:
        """A hierarchical VAE with stock networks: ``layers`` stochastic layers of ``latent_dim``
        dimensions each (or one size per layer, from the bottom up), linear lifts g_l into a
        top-down state of ``width`` features (default: ``hidden[-1]`` for ``"mlp"``,
        ``4 * hidden[-1]`` for ``"conv"``), and a decoder from the state (``"conv"`` for images
        of any number of channels).

        For ``"mlp"`` the state is the pre-activation of the decoder's first hidden layer (of
        ``width`` features): the decoder is the activation, then the layers of
        :meth:`VAE.build <pyro_vae.models.VAE.build>`'s decoder after its first. With its lower
        layers unused (and the default width) the model is then exactly a single-layer VAE with
        the same ``hidden`` sizes, not one with a decoder deeper by a lift (a deeper path trained
        about 10 nats worse on MNIST in 15 epochs). For ``"conv"`` the state enters the decoder's
        linear layer."""
        sizes = layer_sizes(latent_dim, layers)
        width = width or (hidden[-1] if arch == "mlp" else 4 * hidden[-1])
        family = get_likelihood(likelihood, len(x_shape), **likelihood_options)
        lifts = nn.ModuleList(nn.Linear(size, width) for size in sizes)
        priors = nn.ModuleList(MLP(width, (width,), 2 * size) for size in sizes[:-1])
        if arch == "mlp":
            rest = build_decoder(arch, width, hidden[:-1], x_shape, family.params_per_value)
            decoder = nn.Sequential(nn.ReLU(), rest)
        else:
            decoder = build_decoder(arch, width, hidden, x_shape, family.params_per_value)
        return cls(lifts, priors, decoder, family, sizes)

    @property
    def width(self) -> int:
        """The number of features of the top-down state."""
        return self.lifts[0].out_features

    def use_vampprior(
        self,
        posterior: Callable[[torch.Tensor], dist.TorchDistribution],
        pseudo_inputs: torch.Tensor,
        bounds: tuple[float, float] | None = None,
    ) -> HierarchicalVAE:
        """Make p(z_L) the VampPrior (1/K) Σ_k q(z_L | u_k), and return the model.

        :param posterior: the guide's q(z_L | x) (:meth:`TopDownGuide.posterior
            <pyro_vae.guides.TopDownGuide.posterior>`), a diagonal Normal.
        :param ~torch.Tensor pseudo_inputs: initial pseudo-inputs ``[K, *x_shape]``, learned.
        :param bounds: the range the pseudo-inputs are clipped to before encoding, as for
            :class:`~pyro_vae.models.VampPriorVAE`; initial values must lie strictly inside.
        """
        check_pseudo_inputs(pseudo_inputs, bounds)
        self.pseudo_inputs = nn.Parameter(pseudo_inputs.detach().clone())
        self.posterior = posterior
        self.bounds = bounds
        return self

    def prior(self) -> dist.TorchDistribution | DiagonalNormalMixture:
        """p(z_L): the standard Normal, or the VampPrior."""
        if self.posterior is None:
            return StandardNormal(self.prior_loc).to_event(1)
        return vampprior(self.posterior, self.pseudo_inputs, self.bounds)

    def lift(self, layer: int, z: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """The top-down state below ``layer`` given its value ``z``: g_L(z_L) at the top, else
        ``state`` + g_l(z_l)."""
        lifted = self.lifts[layer - 1](z)
        return lifted if state is None else state + lifted

    def prior_parameters(self, layer: int, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of p(z_layer | z_{>layer}) from the state above it (``layer`` < L)."""
        loc, raw_scale = self.priors[layer - 1](state).split(self.latent_dims[layer - 1], dim=-1)
        return loc, softplus(raw_scale) + self.min_scale

    def conditional_prior(self, layer: int, state: torch.Tensor) -> dist.TorchDistribution:
        """p(z_layer | z_{>layer}) as a diagonal Normal (``layer`` < L)."""
        return dist.Normal(*self.prior_parameters(layer, state)).to_event(1)

    def observation(self, state: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z_1, ..., z_L) from the top-down state that the layers leave."""
        return self.likelihood(self.decoder(state))

    def _mean_state(self, z: torch.Tensor) -> torch.Tensor:
        """The state at the bottom with the top at ``z`` and every lower layer at its conditional
        prior mean."""
        state = self.lift(self.layers, z)
        for layer in range(self.layers - 1, 0, -1):
            state = self.lift(layer, self.prior_parameters(layer, state)[0], state)
        return state

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z_L = z, z_l = the mean of p(z_l | z_{>l}) for l < L): what an image
        of the top-layer code ``z`` shows."""
        return self.likelihood.mean(self.decoder(self._mean_state(z)))

    def top_model(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, size: int | None = None):
        """The model with only the top layer random (site ``"z"``) and the layers below it at
        their conditional prior means: what :mod:`pyro_vae.latent` decodes top-layer codes with."""
        with pyro.plate("data", _size(x, size), subsample=x):
            z = pyro.sample(TOP_SITE, self.prior())
            return pyro.sample("x", self.observation(self._mean_state(z)), obs=x)

    def forward(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None, size: int | None = None):
        with pyro.plate("data", _size(x, size), subsample=x):
            z = pyro.sample(TOP_SITE, self.prior())
            state = self.lift(self.layers, z)
            for layer in range(self.layers - 1, 0, -1):
                z = pyro.sample(site_name(layer, self.layers), self.conditional_prior(layer, state))
                state = self.lift(layer, z, state)
            return pyro.sample("x", self.observation(state), obs=x)


def _size(x: torch.Tensor | None, size: int | None) -> int:
    if size is not None:
        return size
    if x is None:
        raise ValueError("pass data x, or size= the number of samples to draw")
    return x.shape[0]
