"""Distributions the stock likelihoods need beyond Pyro's own."""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from torch.distributions import constraints


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
        binary_part = dist.Bernoulli(logits=self.loc, validate_args=False).log_prob(value)
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
