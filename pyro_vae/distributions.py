"""Distributions the stock likelihoods and priors need beyond Pyro's own."""

from __future__ import annotations

import math
from typing import ClassVar

import pyro.distributions as dist
import torch
from torch.distributions import constraints

# log σ(t) = t - log(1 + exp(t)) ≈ t below these: exp(-15) = 3e-7, exp(-37) = 9e-17
LINEAR_BELOW = {torch.float16: -8.0, torch.bfloat16: -8.0, torch.float32: -15.0, torch.float64: -37.0}


class BernoulliLogits(dist.Bernoulli):
    """Pyro's Bernoulli, parameterized by logits, with a log-density that costs about half as much.

    log p(x) = x · logit + log σ(-logit), the same function as
    ``-binary_cross_entropy_with_logits`` for any x, with log σ(t) computed as ``log(sigmoid(t))``
    and as ``t`` itself below a cut-off where the two agree to the precision of the dtype (``-15``
    for float32, ``-37`` for float64). :class:`torch.distributions.Bernoulli` uses a
    ``log1p``-based formula instead, and ``log1p`` is not vectorized in some PyTorch CPU builds
    (PyTorch 2.14's wheel: 80 ms for 3.2 M values on one thread, against 1.4 ms for ``sigmoid``
    and 26 ms for ``log``); most of the cost of scoring binary images is this log-density
    (``experiments/bench_score.py``).
    """

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        super().__init__(logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> BernoulliLogits:
        return BernoulliLogits(self.logits.expand(torch.Size(batch_shape)), validate_args=self._validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return value * self.logits + log_sigmoid(-self.logits)


def log_sigmoid(t: torch.Tensor) -> torch.Tensor:
    """log σ(t) from ``sigmoid`` and ``log``; ``t`` itself below the dtype's cut-off (clamped
    inside the log, so that branch's gradient stays finite)."""
    cut = LINEAR_BELOW.get(t.dtype, LINEAR_BELOW[torch.float32])
    return torch.where(t <= cut, t, torch.sigmoid(t.clamp(min=cut)).log())


class MixedColumns(dist.TorchDistribution):
    """Independent columns of a table: Bernoulli for the binary columns, a location-scale family
    (Normal, or Student-t with ``df`` degrees of freedom) for the others. Event shape ``[columns]``.

    :param ~torch.Tensor loc: logits of the binary columns, locations of the others, ``[..., D]``.
    :param ~torch.Tensor scale: scales of the continuous columns (ignored for binary ones), ``[..., D]``.
    :param ~torch.Tensor binary: boolean mask ``[D]`` of the binary columns.
    :param df: degrees of freedom for a Student-t, or ``None`` for a Normal.
    """

    arg_constraints: ClassVar[dict] = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        binary: torch.Tensor,
        df: float | None = None,
        validate_args: bool | None = None,
    ) -> None:
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.binary = binary.to(device=loc.device, dtype=torch.bool)
        self.df = df
        super().__init__(self.loc.shape[:-1], self.loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> MixedColumns:
        shape = torch.Size(batch_shape) + self.event_shape
        return MixedColumns(self.loc.expand(shape), self.scale.expand(shape), self.binary, self.df)

    def _continuous(self) -> dist.TorchDistribution:
        if self.df is None:
            return dist.Normal(self.loc, self.scale)
        return dist.StudentT(self.df, self.loc, self.scale)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        binary_part = BernoulliLogits(self.loc, validate_args=False).log_prob(value)
        continuous_part = self._continuous().log_prob(value)
        return torch.where(self.binary, binary_part, continuous_part).sum(-1)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            binary_draw = dist.Bernoulli(logits=self.loc).sample(sample_shape)
            continuous_draw = self._continuous().sample(sample_shape)
            return torch.where(self.binary, binary_draw, continuous_draw)

    @property
    def mean(self) -> torch.Tensor:
        return torch.where(self.binary, torch.sigmoid(self.loc), self.loc)


class DiagonalNormalMixture(dist.TorchDistribution):
    """An equally weighted mixture of ``K`` diagonal Normals on ``R^L``, event shape ``[L]``.

    The log-density of all components at once is a quadratic form in ``z``,

    .. math::

        \\log \\mathcal N(z; m_k, s_k^2) = -\\tfrac12 \\big(z^2 \\cdot s_k^{-2} - 2 z \\cdot m_k s_k^{-2}
        + m_k^2 \\cdot s_k^{-2}\\big) - \\textstyle\\sum_l \\log s_{kl} - \\tfrac L2 \\log 2\\pi,

    computed by two matrix products, so the memory is ``[..., K]`` instead of the ``[..., K, L]``
    of :class:`torch.distributions.MixtureSameFamily` (which the importance-sampled scores of many
    particles could not afford). The expansion loses about ``L · max(s⁻²) · eps`` of precision,
    e.g. 1e-3 nats for 40 dimensions, scales down to 0.05, float32; the quadratic form is clamped
    at zero, where rounding could make it negative.

    :param ~torch.Tensor loc: component means ``[K, L]``.
    :param ~torch.Tensor scale: component standard deviations ``[K, L]``.
    """

    arg_constraints: ClassVar[dict] = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        batch_shape: tuple[int, ...] = (),
        validate_args: bool | None = None,
    ) -> None:
        if loc.dim() != 2 or loc.shape != scale.shape:
            raise ValueError(f"loc and scale must both be [components, dim], got {loc.shape} and {scale.shape}")
        self.loc, self.scale = loc, scale
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> DiagonalNormalMixture:
        return DiagonalNormalMixture(self.loc, self.scale, torch.Size(batch_shape), self._validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        precision = self.scale.to(value.dtype).pow(-2)
        loc = self.loc.to(value.dtype)
        quadratic = value.pow(2) @ precision.T - 2 * value @ (loc * precision).T + (loc.pow(2) * precision).sum(-1)
        normalizer = self.scale.to(value.dtype).log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        log_components = -0.5 * quadratic.clamp(min=0) - normalizer
        return log_components.logsumexp(-1) - math.log(loc.shape[0])

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            component = torch.randint(self.loc.shape[0], shape, device=self.loc.device)
            return torch.normal(self.loc[component], self.scale[component])

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.mean(0).expand(self.batch_shape + self.event_shape)
