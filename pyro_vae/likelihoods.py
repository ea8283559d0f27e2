"""Observation likelihoods p(x | z), chosen by name.

A likelihood is a small :class:`torch.nn.Module` in the spirit of ``pyro.contrib.cevae``'s
``DistributionNet``: it maps the raw output of a decoder, shaped ``[..., params, *x_shape]``, to a
Pyro distribution whose event shape is ``x_shape``. ``params_per_value`` tells the decoder how many
raw parameters it must produce per observed value.

Families:

- ``bernoulli``: binary data, decoder gives logits.
- ``continuous-bernoulli``: grey values in [0, 1], a proper density (Loaiza-Ganem & Cunningham 2019).
- ``gaussian``: N(f(z), σ² I) with a fixed standard deviation σ (``scale``): the N(f(z), cI) of the
  textbook derivation with c = σ². Its log-density is -‖x - f(z)‖² / (2c) + const, so c weighs the
  reconstruction error against the KL term (Kingma & Welling 2014, appendix C.2).
- ``gaussian-learned``: the decoder also gives a per-value scale, softplus plus a floor.
- ``student-t``: robust heavy-tailed location-scale family with fixed degrees of freedom.
- ``mixed``: tables with binary and continuous columns, Bernoulli for the first, Normal or
  Student-t with learned scales for the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.distributions import BernoulliLogits, MixedColumns


class Likelihood(nn.Module):
    """Base class: ``likelihood(params)`` returns p(x | z) given raw decoder output ``params``."""

    name: str = ""
    params_per_value: int = 1

    def __init__(self, event_dim: int) -> None:
        super().__init__()
        self.event_dim = event_dim

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        return self.make_dist(*params.unbind(-self.event_dim - 1)).to_event(self.event_dim)

    def make_dist(self, *params: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z): what a reconstruction or a sample grid shows."""
        return self(params).mean

    def check_support(self, x: torch.Tensor) -> None:
        """Raise :class:`ValueError` if ``x`` holds values outside this family's support."""
        if not torch.isfinite(x).all():
            raise ValueError(f"{self.name} likelihood: data contain NaN or infinite values")


class Bernoulli(Likelihood):
    name = "bernoulli"

    def make_dist(self, logits: torch.Tensor) -> dist.TorchDistribution:
        return BernoulliLogits(logits)

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        if not ((x == 0) | (x == 1)).all():
            raise ValueError(
                "bernoulli likelihood needs binary data in {0, 1}; binarize the data "
                "or use the continuous-bernoulli likelihood for grey values in [0, 1]"
            )


class ContinuousBernoulli(Likelihood):
    name = "continuous-bernoulli"

    def make_dist(self, logits: torch.Tensor) -> dist.TorchDistribution:
        # The density's normalizer is numerically delicate near probs = 0.5; torch handles that
        # with a Taylor expansion. Clamping the logits keeps it finite for extreme decoders.
        return dist.ContinuousBernoulli(logits=logits.clamp(-30.0, 30.0))

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        if (x < 0).any() or (x > 1).any():
            raise ValueError("continuous-bernoulli likelihood needs data in [0, 1]; rescale the data")


class Gaussian(Likelihood):
    """N(f(z), scale² I) with a fixed standard deviation ``scale`` (c = scale²)."""

    name = "gaussian"

    def __init__(self, event_dim: int, scale: float = 0.1) -> None:
        super().__init__(event_dim)
        if not scale > 0:
            raise ValueError(f"gaussian likelihood needs a positive scale, got {scale}")
        self.scale = float(scale)

    def make_dist(self, loc: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(loc, torch.full_like(loc, self.scale))


class GaussianLearned(Likelihood):
    """N(f(z), diag(s(z))²) with ``s = softplus(raw) + min_scale``."""

    name = "gaussian-learned"
    params_per_value = 2

    def __init__(self, event_dim: int, min_scale: float = 1e-3) -> None:
        super().__init__(event_dim)
        self.min_scale = float(min_scale)

    def make_dist(self, loc: torch.Tensor, raw_scale: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(loc, softplus(raw_scale) + self.min_scale)


class StudentT(Likelihood):
    """Student-t with fixed degrees of freedom ``df``, learned location and scale."""

    name = "student-t"
    params_per_value = 2

    def __init__(self, event_dim: int, df: float = 4.0, min_scale: float = 1e-3) -> None:
        super().__init__(event_dim)
        self.df = float(df)
        self.min_scale = float(min_scale)

    def make_dist(self, loc: torch.Tensor, raw_scale: torch.Tensor) -> dist.TorchDistribution:
        return dist.StudentT(self.df, loc, softplus(raw_scale) + self.min_scale)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params.unbind(-self.event_dim - 1)[0]


class Mixed(Likelihood):
    """For tables: Bernoulli for the columns flagged ``binary``, and for the others a Normal
    (``df=None``) or Student-t with learned location and scale (softplus plus ``min_scale``).
    A binary column's value strictly between 0 and 1 (an unseen category mapped in between) is
    scored by the Bernoulli's continuous extension, below both seen values."""

    name = "mixed"
    params_per_value = 2

    def __init__(
        self, event_dim: int, binary: Sequence[bool] = (), df: float | None = None, min_scale: float = 1e-3
    ) -> None:
        super().__init__(event_dim)
        if event_dim != 1:
            raise ValueError("the mixed likelihood is for tables: one observation is a vector of columns")
        self.register_buffer("binary", torch.tensor(list(binary), dtype=torch.bool))
        self.df = df
        self.min_scale = float(min_scale)

    def forward(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc, raw_scale = params.unbind(-2)
        binary = self.binary if len(self.binary) else torch.zeros(loc.shape[-1], dtype=torch.bool)
        return MixedColumns(loc, softplus(raw_scale) + self.min_scale, binary, self.df)

    def check_support(self, x: torch.Tensor) -> None:
        super().check_support(x)
        binary = x[..., self.binary] if len(self.binary) else x[..., :0]
        if (binary < 0).any() or (binary > 1).any():
            raise ValueError("mixed likelihood: the binary columns must lie in [0, 1]")


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls for cls in (Bernoulli, ContinuousBernoulli, Gaussian, GaussianLearned, StudentT, Mixed)
}


def get_likelihood(name: str, event_dim: int, **options) -> Likelihood:
    """Build the likelihood family called ``name`` (see :data:`LIKELIHOODS`).

    :param int event_dim: number of dimensions of one observation (1 for vectors, 3 for images).
    :param options: family options, e.g. ``scale`` for ``gaussian``, ``df`` for ``student-t``.
    """
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name](event_dim, **options)
