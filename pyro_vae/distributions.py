"""Distributions the stock likelihoods need beyond Pyro's own."""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from torch.distributions import constraints

LINEAR_BELOW = -15.0  # log σ(s) = s - log(1 + exp(s)), and exp(-15) = 3e-7


class BernoulliLogits(dist.Bernoulli):
    """Pyro's Bernoulli, parameterized by logits, with a log-density that costs about half as much.

    For x in {0, 1}, log p(x) = log σ(s) with s = (2x - 1) · logit. It is computed as
    ``log(sigmoid(s))``, switching to ``s`` itself below ``s = -15`` (where the two agree to
    3e-7), instead of the ``log1p``-based ``binary_cross_entropy_with_logits`` that
    :class:`torch.distributions.Bernoulli` uses: ``sigmoid`` is vectorized in every PyTorch CPU
    build, and ``log1p`` is not in some (PyTorch 2.14's wheel: 80 ms for 3.2 M values on one
    thread, against 1.4 ms for ``sigmoid`` and 26 ms for ``log``). Most of the cost of scoring
    binary images is this log-density (``experiments/bench_score.py``).
    """

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        super().__init__(logits=logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> BernoulliLogits:
        return BernoulliLogits(self.logits.expand(torch.Size(batch_shape)), validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        signed = self.logits * (2 * value - 1)
        # Clamped inside the log so the unused branch has a finite gradient below -15.
        return torch.where(signed < LINEAR_BELOW, signed, torch.sigmoid(signed.clamp(min=LINEAR_BELOW)).log())


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
