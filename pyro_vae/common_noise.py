"""Common random numbers across the data: every datum's latent draws come from one noise tensor.

A per-datum Monte Carlo score (:mod:`pyro_vae.scoring`) draws fresh noise for every datum, so a
datum's estimate depends on where it sits in the call: scored alone, in another batch or in
another order, it gets other draws and another number. Under :class:`CommonNoise` every guide
site inside the data plate is drawn by reparameterization,
:math:`z_{k,n} = \\mu_\\phi(x_n) + \\sigma_\\phi(x_n)\\,\\varepsilon_k`, with one standard-normal
:math:`\\varepsilon_k` per particle shared by all data and taken from a generator of its own: a
datum's score is then a function of the datum and the seed only (common random numbers,
Glasserman 2004, section 4.2). The caller's random generators are not touched.

Distributions that can be drawn that way: ``Normal``, ``MultivariateNormal``, ``Delta`` (no noise),
and ``Independent``, expanded, masked or transformed versions of them (normalizing flows over a
Normal base). Any other guide distribution raises a :class:`CommonNoiseError` (a ``ValueError``) that names it.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import TransformedDistribution

from pyro_vae.distributions import VALUE_WRAPPERS
from pyro_vae.program import data_frame


class CommonNoiseError(ValueError):
    """A guide site whose distribution common noise cannot draw."""


def _value(fn: torch.distributions.Distribution, noise: torch.Tensor) -> torch.Tensor:
    """The draw of ``fn`` whose standard noise is ``noise`` (broadcast against its parameters)."""
    if isinstance(fn, VALUE_WRAPPERS):
        return _value(fn.base_dist, noise)
    if isinstance(fn, TransformedDistribution):
        value = _value(fn.base_dist, noise)
        for transform in fn.transforms:
            value = transform(value)
        return value
    if isinstance(fn, dist.Delta):
        return fn.v
    if isinstance(fn, torch.distributions.MultivariateNormal):
        return fn.loc + (fn.scale_tril @ noise.unsqueeze(-1)).squeeze(-1)
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc + fn.scale * noise
    raise CommonNoiseError(
        f"common noise draws guide sites from a Normal (or a flow, mask or Independent over one); "
        f"this guide samples a {type(fn).__name__}. Score without common_noise, or give the guide a Normal."
    )


class CommonNoise(Messenger):
    """Draws every latent site inside ``data_plate`` from standard noise shared by all its data.

    Enter it outside the plates of the draw (the particle plate included), so that each site's
    distribution arrives with its full batch shape.

    :param str data_plate: the name of the data plate.
    :param ~torch.Generator generator: where the noise comes from (a CPU generator; the noise is
        moved to the site's device, so CPU and GPU runs draw alike).
    """

    def __init__(self, data_plate: str, generator: torch.Generator) -> None:
        super().__init__()
        self.data_plate = data_plate
        self.generator = generator

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None or isinstance(msg["fn"], _Subsample):
            return  # an inner plate's subsample site draws indices, not noise
        frame = data_frame(msg, self.data_plate)
        if frame is None:
            return
        fn = msg["fn"]
        shape = list(fn.batch_shape + fn.event_shape)
        data_dim = frame.dim - len(fn.event_shape)
        if -data_dim <= len(shape):
            shape[data_dim] = 1
        noise = torch.randn(shape, generator=self.generator, dtype=torch.float64)
        dtype, device = _dtype_device(fn)
        msg["value"] = _value(fn, noise.to(dtype=dtype, device=device)).expand(fn.batch_shape + fn.event_shape)


def _dtype_device(fn: torch.distributions.Distribution) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of ``fn``'s draws, read off its location."""
    while isinstance(fn, (*VALUE_WRAPPERS, TransformedDistribution)):
        fn = fn.base_dist
    location = fn.v if isinstance(fn, dist.Delta) else fn.mean
    return location.dtype, location.device
