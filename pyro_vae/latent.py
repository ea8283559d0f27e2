"""Looking inside the latent space: encode, decode, interpolate, edit, traverse, map, rebalance.

Every function works on any model/guide pair that follows the pyro_vae convention (see
:mod:`pyro_vae.convention`): :func:`encode` traces the guide and reads the distribution of its
per-datum latent site (the only one, or the one named by ``site=``; ``"z"`` in the stock parts,
``"latent"`` in Pyro's tutorial VAE), using its ``mean`` or, for a distribution without one (a
normalizing flow), the mean of
:data:`~pyro_vae.distributions.MEAN_DRAWS` draws. :func:`decode` conditions the model on
latent values at that site, which the model must have, and reads the mean of its observed site.
Decoding runs the model without data (``x=None``); a model that cannot be run so is run on
placeholder data of the shape ``x_shape`` (the functions given data use theirs), and without
either the error says how to fix it. Labels ``y`` are passed through, so conditional models work
too.

References: Kingma & Welling (2014), "Auto-encoding variational Bayes" (the 2-D manifold of
Figure 4); White (2016), "Sampling generative networks" (spherical interpolation and attribute
vectors); Amini et al. (2019), "Uncovering and mitigating algorithmic bias through learned latent
structure" (DB-VAE resampling weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_vae import plots
from pyro_vae.convention import DATA_PLATE, DEFAULT, OBSERVED_SITE
from pyro_vae.distributions import mean_of
from pyro_vae.program import bind, data_frame, latent_sites, observed_site, sample_sites


def _latent_site(trace, site: str | None) -> dict:
    latents = {name: msg for name, msg in latent_sites(trace).items() if data_frame(msg, DATA_PLATE) is not None}
    if site is not None:
        if site not in latents:
            raise ValueError(f"the guide has no per-datum latent site {site!r}; its latent sites are {sorted(latents)}")
        return latents[site]
    if len(latents) != 1:
        raise ValueError(
            f"the guide has {len(latents)} per-datum latent sites {sorted(latents)}; name the one to use with site="
        )
    return next(iter(latents.values()))


def posterior(
    guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None, site: str | None = None
) -> tuple[str, dist.Distribution]:
    """The name and the distribution q(z | x) of the guide's per-datum latent site (its only one,
    or ``site``)."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(bind(guide)).get_trace(x, y, size=x.shape[0])
    latent = _latent_site(trace, site)
    return latent["name"], latent["fn"]


def encode(
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int | None = None,
    site: str | None = None,
) -> torch.Tensor:
    """The mean of q(z | x) for every datum, ``[N, latent_dim]``; with ``num_samples``, that many
    draws instead, ``[num_samples, N, latent_dim]``."""
    _, q = posterior(guide, x, y, site)
    if num_samples is None:
        return mean_of(q)
    with torch.no_grad():
        return q.sample((num_samples,))


def _trace_without_data(model: Callable, z: torch.Tensor, y: torch.Tensor | None, x_shape: Sequence[int] | None):
    """The model's trace with no data (``x=None``), or on zeros of ``x_shape`` if it needs data;
    and whether the observed value is the model's own draw."""
    rows = z.shape[0]
    with torch.no_grad(), poutine.block():
        try:
            return poutine.trace(model).get_trace(None, y, size=rows), True
        except Exception as failure:
            if x_shape is None:
                raise ValueError(
                    f"the model cannot be run without data (model(None, size={rows}) failed with "
                    f"{type(failure).__name__}: {failure}); let it draw when x is None (e.g. "
                    "rows = size if x is None else x.shape[0]), or pass x_shape=, the shape of one datum, "
                    "to decode on placeholder data"
                ) from failure
            placeholder = torch.zeros(rows, *x_shape, dtype=z.dtype, device=z.device)
            return poutine.trace(model).get_trace(placeholder, y, size=rows), False


def _data_site(trace, conditioned: str, own_draw: bool) -> str:
    """The model's data site in a trace conditioned at ``conditioned``: its observed site, or,
    when the model drew the data itself, the one per-datum site besides the latent (or ``"x"``)."""
    if not own_draw:
        return observed_site(trace, exclude=conditioned)
    drawn = [
        name
        for name, msg in sample_sites(trace).items()
        if name not in (conditioned, DEFAULT.label_site) and data_frame(msg, DATA_PLATE) is not None
    ]
    if OBSERVED_SITE in drawn or len(drawn) != 1:
        if OBSERVED_SITE not in drawn:
            raise ValueError(f"cannot tell which of the model's sites {drawn} holds the data; name it 'x'")
        return OBSERVED_SITE
    return drawn[0]


def decode(
    model: Callable,
    z: torch.Tensor,
    y: torch.Tensor | None = None,
    site: str = "z",
    mean: bool = True,
    x_shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """The mean of p(x | z) (or, with ``mean=False``, a draw) for every row of ``z``, the model
    conditioned on ``z`` at its latent site ``site``.

    :param x_shape: the shape of one datum, for a model that cannot be run with ``x=None``.
    :raises ValueError: if the model has no latent site ``site``.
    """
    conditioned = poutine.condition(bind(model), data={site: z})
    trace, own_draw = _trace_without_data(conditioned, z, y, x_shape)
    latent = trace.nodes.get(site)
    if latent is None or latent["type"] != "sample":
        raise ValueError(
            f"the model has no latent site {site!r} to condition on; its latent sites are "
            f"{sorted(n for n, msg in sample_sites(trace).items() if not msg['is_observed'] and n != OBSERVED_SITE)}"
        )
    observed = trace.nodes[_data_site(trace, site, own_draw)]
    if mean:
        return observed["fn"].mean
    return observed["value"] if own_draw else observed["fn"].sample()


def reconstruct(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Decode the posterior mean of every datum."""
    name, q = posterior(guide, x, y)
    return decode(model, mean_of(q), y, site=name, x_shape=x.shape[1:])


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    cos = (a * b).sum(-1, keepdim=True) / (a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True)).clamp(1e-12)
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def interpolate_latents(z_a: torch.Tensor, z_b: torch.Tensor, steps: int, method: str = "linear") -> torch.Tensor:
    """``steps`` points from ``z_a`` to ``z_b`` (both ends included): ``linear``, or ``spherical``
    (along the great circle, which keeps the norm typical of Gaussian draws; White 2016)."""
    if steps < 2:
        raise ValueError(f"interpolation needs at least 2 steps, got {steps}")
    t = torch.linspace(0, 1, steps, dtype=z_a.dtype, device=z_a.device).unsqueeze(-1)
    if method == "linear":
        return (1 - t) * z_a + t * z_b
    if method == "spherical":
        return _slerp(z_a.expand(steps, -1), z_b.expand(steps, -1), t)
    raise ValueError(f"unknown interpolation {method!r}; use 'linear' or 'spherical'")


def interpolate(
    model: Callable,
    guide: Callable,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    steps: int = 10,
    method: str = "linear",
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decoded points on the path between the posterior means of the single data ``x_a`` and
    ``x_b``, ``[steps, *x_shape]``: the first and last are their reconstructions."""
    pair = torch.stack([x_a, x_b])
    labels = None if y is None else y.reshape(1).expand(2)
    name, q = posterior(guide, pair, labels)
    means = mean_of(q)
    path = interpolate_latents(means[0], means[1], steps, method)
    return decode(model, path, None if y is None else y.reshape(1).expand(steps), site=name, x_shape=x_a.shape)


def attribute_vector(guide: Callable, x: torch.Tensor, has_attribute: torch.Tensor) -> torch.Tensor:
    """Mean latent code of the data with the attribute minus that of the data without it."""
    has_attribute = torch.as_tensor(has_attribute, dtype=torch.bool, device=x.device)
    if has_attribute.all() or not has_attribute.any():
        raise ValueError("an attribute vector needs data with and without the attribute")
    z = encode(guide, x)
    return z[has_attribute].mean(0) - z[~has_attribute].mean(0)


def apply_attribute(
    model: Callable, guide: Callable, x: torch.Tensor, vector: torch.Tensor, strengths: Sequence[float]
) -> torch.Tensor:
    """Each datum's posterior mean moved by ``strength * vector`` and decoded:
    ``[len(strengths), N, *x_shape]`` (strength 0 is the reconstruction)."""
    name, q = posterior(guide, x)
    means = mean_of(q)
    return torch.stack(
        [decode(model, means + strength * vector, site=name, x_shape=x.shape[1:]) for strength in strengths]
    )


def manifold_latents(points_per_side: int, bound: float = 0.95) -> torch.Tensor:
    """A grid of 2-D latent points: linearly spaced on [1 - bound, bound]² of the unit square and
    mapped through the inverse Gaussian CDF (Kingma & Welling 2014, Figure 4). Rows run top to
    bottom from high to low z₂, columns left to right from low to high z₁."""
    quantiles = torch.linspace(1 - bound, bound, points_per_side)
    values = torch.distributions.Normal(0.0, 1.0).icdf(quantiles)
    z1, z2 = torch.meshgrid(values, values.flip(0), indexing="xy")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1)


def manifold_grid(
    model: Callable,
    points_per_side: int = 20,
    bound: float = 0.95,
    site: str = "z",
    x_shape: Sequence[int] | None = None,
) -> torch.Tensor:
    """Decoded images of :func:`manifold_latents` for a model with a 2-D latent site ``site``,
    ``[points_per_side², *x_shape]`` in row-major order (on the device of the model's
    parameters, if it is an ``nn.Module``)."""
    parameter = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    z = manifold_latents(points_per_side, bound)
    return decode(model, z if parameter is None else z.to(parameter), site=site, x_shape=x_shape)


def traverse(
    model: Callable, guide: Callable, x: torch.Tensor, values: Sequence[float] = (-3, -2, -1, 0, 1, 2, 3)
) -> torch.Tensor:
    """Vary one latent dimension at a time around the posterior mean of the single datum ``x``:
    ``[latent_dim, len(values), *x_shape]``, dimension d set to each value in turn."""
    name, q = posterior(guide, x.unsqueeze(0))
    center = mean_of(q)[0]
    grid = center.repeat(center.shape[-1], len(values), 1)
    for dim in range(center.shape[-1]):
        grid[dim, :, dim] = torch.as_tensor(values, dtype=center.dtype)
    decoded = decode(model, grid.reshape(-1, center.shape[-1]), site=name, x_shape=x.shape)
    return decoded.reshape(center.shape[-1], len(values), *decoded.shape[1:])


def scatter_coordinates(z: torch.Tensor) -> tuple[np.ndarray, str]:
    """2-D coordinates for a scatter plot of latent codes: the codes themselves when they are
    2-D, else their first two principal components; with a description of the axes."""
    codes = z.detach().cpu().double().numpy()
    if codes.shape[1] == 2:
        return codes, "z"
    centred = codes - codes.mean(0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    explained = singular[:2] ** 2 / (singular**2).sum()
    return centred @ components[:2].T, f"PCA of the {codes.shape[1]}-d latent means ({explained.sum():.0%} of variance)"


def debias_weights(guide: Callable, x: torch.Tensor, bins: int = 10, alpha: float = 0.01) -> torch.Tensor:
    """DB-VAE resampling weights (Amini et al. 2019): the latent mean of each datum is placed in a
    per-dimension histogram of ``bins`` bins (densities normalized to sum to 1); its weight is
    the product over dimensions of 1 / (density + ``alpha``), normalized to sum to 1. Rare latent
    values get large weights; a larger ``alpha`` evens the weights out."""
    if bins < 1 or alpha <= 0:
        raise ValueError(f"bins must be positive and alpha > 0, got {bins} and {alpha}")
    z = encode(guide, x).detach().cpu().double()
    log_weights = torch.zeros(z.shape[0], dtype=torch.float64)
    for column in z.T.contiguous():
        edges = torch.linspace(column.min().item(), column.max().item(), bins + 1, dtype=torch.float64)
        index = torch.bucketize(column, edges[1:-1], right=True)
        density = torch.bincount(index, minlength=bins).double() / len(column)
        log_weights -= torch.log(density[index] + alpha)
    return torch.softmax(log_weights, dim=0).to(x.device)


def latent_scatter(
    guide: Callable, x: torch.Tensor, labels: torch.Tensor | None, path: str | Path, title: str = "latent space"
) -> Path:
    """Scatter plot of the posterior means of ``x`` (2-D, or their first two principal
    components), coloured by ``labels``; written as PNG."""
    coordinates, description = scatter_coordinates(encode(guide, x))
    axis_labels = ("z₁", "z₂") if description == "z" else ("principal component 1", "principal component 2")
    title = title if description == "z" else f"{title}\n{description}"
    return plots.scatter(coordinates, None if labels is None else labels.cpu().numpy(), path, title, axis_labels)
