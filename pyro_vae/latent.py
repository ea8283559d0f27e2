"""Looking inside the latent space: encode, decode, interpolate, edit, traverse, map, rebalance.

Every function works on any model/guide pair that follows the pyro_vae convention (see
:mod:`pyro_vae.convention`; other names are given with ``convention=``, as in
:func:`~pyro_vae.scoring.elbo`): :func:`encode` traces the guide and reads the distribution of
its per-datum latent site (the only one, or the one named by ``site=``; ``"z"`` in the stock
parts, ``"latent"`` in Pyro's tutorial VAE), using its ``mean`` or, for a distribution without one
(a normalizing flow), the mean of :data:`~pyro_vae.distributions.MEAN_DRAWS` draws.
:func:`decode` conditions the model on latent values at that site, which the model must have, and
reads the mean of its data site (the convention's observed site, ``"x"``, or the one per-datum
site that holds data; ``pyro.deterministic`` and auxiliary sites never do). Decoding runs the
model without data (``x=None``); a model that cannot be run so is run on placeholder data of the
shape ``x_shape`` (the functions given data use theirs), and without either the error says how to
fix it. Labels ``y`` are passed through, so conditional models work too.

Latent codes and decoded data are batch first, ``[N, *event]``, wherever the data plate sits: a
program whose data plate is ``pyro.plate("data", N, dim=-2)`` draws its per-datum latents with
batch dims ``[N, 1]``; the tools drop the size-1 batch dims that no plate declares on the way out
(:func:`batch_first`) and put them back when they condition the model (:func:`site_layout`).

References: Kingma & Welling (2014), "Auto-encoding variational Bayes" (the 2-D manifold of
Figure 4); White (2016), "Sampling generative networks" (spherical interpolation and attribute
vectors); Amini et al. (2019), "Uncovering and mitigating algorithmic bias through learned latent
structure" (DB-VAE resampling weights).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from pyro_vae import plots
from pyro_vae.convention import DEFAULT, OBSERVED_SITE, Convention
from pyro_vae.distributions import mean_of
from pyro_vae.program import bind, data_frame, holds_no_data, latent_sites, sample_sites


def _data_position(msg: dict, plate: str, batch_dims: int) -> int | None:
    """Where the data plate's dim sits among a site's ``batch_dims`` batch dims (from the left),
    or ``None`` for a site outside the data plate."""
    frame = data_frame(msg, plate)
    if frame is None:
        return None
    if batch_dims < -frame.dim:
        raise ValueError(
            f"site {msg['name']!r} has {batch_dims} batch dims, fewer than its data plate's dim={frame.dim} needs"
        )
    return batch_dims + frame.dim


def batch_first(value: torch.Tensor, msg: dict, plate: str = DEFAULT.data_plate, sample_dims: int = 0) -> torch.Tensor:
    """``value`` of the site ``msg`` (``sample_dims`` sample dims, then the site's batch and event
    dims) with the data plate's dim first after the sample dims and the size-1 batch dims that no
    plate declares dropped: ``[*sample, N, *inner plates, *event]``. A site outside the data
    plate is returned as it is.

    :raises ValueError: if a batch dim left of the data plate's has more than one entry.
    """
    event_dims = len(msg["fn"].event_shape)
    shape = value.shape
    batch = shape[sample_dims : len(shape) - event_dims]
    start = _data_position(msg, plate, len(batch))
    if start is None:
        return value
    if any(size != 1 for size in batch[:start]):
        raise ValueError(
            f"site {msg['name']!r} has batch dims {tuple(batch[:start])} left of its data plate {plate!r}; "
            "the latent tools need the data plate to be the outermost plate of per-datum sites"
        )
    plate_dims = {len(batch) + frame.dim for frame in msg["cond_indep_stack"] if frame.vectorized}
    inner = [size for at, size in enumerate(batch[start + 1 :], start + 1) if size != 1 or at in plate_dims]
    return value.reshape(*shape[:sample_dims], batch[start], *inner, *shape[len(shape) - event_dims :])


def site_layout(value: torch.Tensor, msg: dict, plate: str = DEFAULT.data_plate) -> torch.Tensor:
    """The batch-first ``value`` (``[N, ...]``, as :func:`batch_first` gives) in the layout of the
    model's site ``msg``: ``[N, *the site's batch dims right of the data plate's, *event]``. A site
    outside the data plate takes ``value`` as it is.

    :raises ValueError: if ``value`` does not hold one entry per element of that layout.
    """
    batch = msg["fn"].batch_shape
    start = _data_position(msg, plate, len(batch))
    if start is None:
        return value
    shape = (value.shape[0], *batch[start + 1 :], *msg["fn"].event_shape)
    if value.numel() != math.prod(shape):
        raise ValueError(
            f"cannot set the model's site {msg['name']!r} to values of shape {tuple(value.shape)}: "
            f"it takes [rows, {', '.join(map(str, shape[1:]))}]"
        )
    return value.reshape(shape)


class _ConditionBatchFirst(Messenger):
    """Condition the model's site ``site`` on batch-first values, in the site's own layout."""

    def __init__(self, site: str, value: torch.Tensor, plate: str) -> None:
        super().__init__()
        self.site, self.value, self.plate = site, value, plate

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] == self.site:
            msg["value"] = site_layout(self.value, msg, self.plate)
            msg["is_observed"] = True


def _conditioned(model: Callable, site: str, z: torch.Tensor, plate: str) -> Callable:
    def program(*args, **kwargs):
        with _ConditionBatchFirst(site, z, plate):
            return model(*args, **kwargs)

    return program


def _guide_site(guide: Callable, x: torch.Tensor, y: torch.Tensor | None, site: str | None, convention: Convention):
    """The guide's trace entry of its per-datum latent site (its only one, or ``site``)."""
    plate = convention.data_plate
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(bind(guide, plate)).get_trace(x, y, size=x.shape[0])
    latents = {name: msg for name, msg in latent_sites(trace).items() if data_frame(msg, plate) is not None}
    if not latents:
        raise ValueError(
            f"the guide has no latent site inside pyro.plate({plate!r}, ...); its latent sites are "
            f"{sorted(latent_sites(trace))}; name its data plate with convention=Convention(data_plate=...)"
        )
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
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    site: str | None = None,
    *,
    convention: Convention | None = None,
) -> tuple[str, dist.Distribution]:
    """The name and the distribution q(z | x) of the guide's per-datum latent site (its only one,
    or ``site``), as the guide builds it (its batch dims in the guide's own layout; :func:`encode`
    gives them batch first).

    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``
        (:class:`~pyro_vae.convention.Convention`).
    """
    latent = _guide_site(guide, x, y, site, convention or DEFAULT)
    return latent["name"], latent["fn"]


def _codes(
    guide: Callable, x: torch.Tensor, y: torch.Tensor | None, site: str | None, convention: Convention | None
) -> tuple[str, torch.Tensor]:
    """The latent site's name and the posterior mean of every datum, batch first."""
    convention = convention or DEFAULT
    latent = _guide_site(guide, x, y, site, convention)
    return latent["name"], batch_first(mean_of(latent["fn"]), latent, convention.data_plate)


def encode(
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int | None = None,
    site: str | None = None,
    *,
    convention: Convention | None = None,
) -> torch.Tensor:
    """The mean of q(z | x) for every datum, ``[N, latent_dim]``; with ``num_samples``, that many
    draws instead, ``[num_samples, N, latent_dim]``.

    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    """
    if num_samples is None:
        return _codes(guide, x, y, site, convention)[1]
    convention = convention or DEFAULT
    latent = _guide_site(guide, x, y, site, convention)
    with torch.no_grad():
        return batch_first(latent["fn"].sample((num_samples,)), latent, convention.data_plate, sample_dims=1)


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


def _may_hold_data(msg: dict, own_draw: bool, plate: str) -> bool:
    """Whether a model site can be the data: a per-datum sample site, drawn by the model (run
    without data) or observed (on placeholder data), neither ``pyro.deterministic`` nor auxiliary."""
    return msg["is_observed"] != own_draw and not holds_no_data(msg) and data_frame(msg, plate) is not None


def _data_site(trace, conditioned: str, own_draw: bool, convention: Convention) -> str:
    """The model's data site in a trace conditioned at ``conditioned``: the convention's observed
    site, ``"x"``, or the one per-datum site besides the latent and the label that holds data."""
    if convention.observed_site is not None:
        if convention.observed_site not in sample_sites(trace):
            raise ValueError(f"the model has no sample site named {convention.observed_site!r}")
        return convention.observed_site
    candidates = [
        name
        for name, msg in sample_sites(trace).items()
        if name not in (conditioned, convention.label_site) and _may_hold_data(msg, own_draw, convention.data_plate)
    ]
    if OBSERVED_SITE in candidates:
        return OBSERVED_SITE
    if len(candidates) != 1:
        raise ValueError(
            f"cannot tell which of the model's sites {candidates} holds the data; name it "
            "with convention=Convention(observed_site=...)"
        )
    return candidates[0]


def decode(
    model: Callable,
    z: torch.Tensor,
    y: torch.Tensor | None = None,
    site: str = "z",
    mean: bool = True,
    x_shape: Sequence[int] | None = None,
    *,
    convention: Convention | None = None,
) -> torch.Tensor:
    """The mean of p(x | z) (or, with ``mean=False``, a draw) for every row of ``z``, the model
    conditioned on ``z`` at its latent site ``site``; batch first, ``[len(z), *x_shape]``.

    :param z: batch-first latent values, ``[rows, *event]`` (as :func:`encode` gives them).
    :param x_shape: the shape of one datum, for a model that cannot be run with ``x=None``.
    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    :raises ValueError: if the model has no latent site ``site``.
    """
    convention = convention or DEFAULT
    plate = convention.data_plate
    conditioned = _conditioned(bind(model, plate), site, z, plate)
    trace, own_draw = _trace_without_data(conditioned, z, y, x_shape)
    latent = trace.nodes.get(site)
    if latent is None or latent["type"] != "sample":
        others = (OBSERVED_SITE, convention.observed_site, convention.label_site)
        raise ValueError(
            f"the model has no latent site {site!r} to condition on; its latent sites are "
            f"{sorted(name for name in latent_sites(trace) if name not in others)}"
        )
    observed = trace.nodes[_data_site(trace, site, own_draw, convention)]
    if mean:
        value = observed["fn"].mean
    else:
        value = observed["value"] if own_draw else observed["fn"].sample()
    return batch_first(value, observed, plate)


def reconstruct(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    site: str | None = None,
    convention: Convention | None = None,
) -> torch.Tensor:
    """Decode the posterior mean of every datum at the guide's per-datum latent site (its only
    one, or ``site``).

    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    """
    name, means = _codes(guide, x, y, site, convention)
    return decode(model, means, y, site=name, x_shape=x.shape[1:], convention=convention)


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
    *,
    site: str | None = None,
    convention: Convention | None = None,
) -> torch.Tensor:
    """Decoded points on the path between the posterior means of the single data ``x_a`` and
    ``x_b``, ``[steps, *x_shape]``: the first and last are their reconstructions.

    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    """
    labels = None if y is None else y.reshape(1).expand(2)
    name, means = _codes(guide, torch.stack([x_a, x_b]), labels, site, convention)
    path = interpolate_latents(means[0], means[1], steps, method)
    labels = None if y is None else y.reshape(1).expand(steps)
    return decode(model, path, labels, site=name, x_shape=x_a.shape, convention=convention)


def attribute_vector(
    guide: Callable,
    x: torch.Tensor,
    has_attribute: torch.Tensor,
    *,
    site: str | None = None,
    convention: Convention | None = None,
) -> torch.Tensor:
    """Mean latent code of the data with the attribute minus that of the data without it.

    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    """
    has_attribute = torch.as_tensor(has_attribute, dtype=torch.bool, device=x.device)
    if has_attribute.all() or not has_attribute.any():
        raise ValueError("an attribute vector needs data with and without the attribute")
    z = encode(guide, x, site=site, convention=convention)
    return z[has_attribute].mean(0) - z[~has_attribute].mean(0)


def apply_attribute(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    vector: torch.Tensor,
    strengths: Sequence[float],
    *,
    site: str | None = None,
    convention: Convention | None = None,
) -> torch.Tensor:
    """Each datum's posterior mean moved by ``strength * vector`` and decoded:
    ``[len(strengths), N, *x_shape]`` (strength 0 is the reconstruction).

    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    """
    name, means = _codes(guide, x, None, site, convention)
    decoded = [
        decode(model, means + strength * vector, site=name, x_shape=x.shape[1:], convention=convention)
        for strength in strengths
    ]
    return torch.stack(decoded)


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
    *,
    convention: Convention | None = None,
) -> torch.Tensor:
    """Decoded images of :func:`manifold_latents` for a model with a 2-D latent site ``site``,
    ``[points_per_side², *x_shape]`` in row-major order (on the device of the model's
    parameters, if it is an ``nn.Module``).

    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    """
    parameter = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    z = manifold_latents(points_per_side, bound)
    z = z if parameter is None else z.to(parameter)
    return decode(model, z, site=site, x_shape=x_shape, convention=convention)


def traverse(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    values: Sequence[float] = (-3, -2, -1, 0, 1, 2, 3),
    *,
    site: str | None = None,
    convention: Convention | None = None,
) -> torch.Tensor:
    """Vary one latent dimension at a time around the posterior mean of the single datum ``x``:
    ``[latent_dim, len(values), *x_shape]``, dimension d set to each value in turn.

    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    """
    name, means = _codes(guide, x.unsqueeze(0), None, site, convention)
    center = means[0]
    grid = center.repeat(center.shape[-1], len(values), 1)
    for dim in range(center.shape[-1]):
        grid[dim, :, dim] = torch.as_tensor(values, dtype=center.dtype)
    decoded = decode(model, grid.reshape(-1, center.shape[-1]), site=name, x_shape=x.shape, convention=convention)
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


def debias_weights(
    guide: Callable,
    x: torch.Tensor,
    bins: int = 10,
    alpha: float = 0.01,
    *,
    site: str | None = None,
    convention: Convention | None = None,
) -> torch.Tensor:
    """DB-VAE resampling weights (Amini et al. 2019): the latent mean of each datum is placed in a
    per-dimension histogram of ``bins`` bins (densities normalized to sum to 1); its weight is
    the product over dimensions of 1 / (density + ``alpha``), normalized to sum to 1. Rare latent
    values get large weights; a larger ``alpha`` evens the weights out.

    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    """
    if bins < 1 or alpha <= 0:
        raise ValueError(f"bins must be positive and alpha > 0, got {bins} and {alpha}")
    z = encode(guide, x, site=site, convention=convention).detach().cpu().double()
    log_weights = torch.zeros(z.shape[0], dtype=torch.float64)
    for column in z.T.contiguous():
        edges = torch.linspace(column.min().item(), column.max().item(), bins + 1, dtype=torch.float64)
        index = torch.bucketize(column, edges[1:-1], right=True)
        density = torch.bincount(index, minlength=bins).double() / len(column)
        log_weights -= torch.log(density[index] + alpha)
    return torch.softmax(log_weights, dim=0).to(x.device)


def latent_scatter(
    guide: Callable,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    path: str | Path,
    title: str = "latent space",
    *,
    site: str | None = None,
    convention: Convention | None = None,
) -> Path:
    """Scatter plot of the posterior means of ``x`` (2-D, or their first two principal
    components), coloured by ``labels``; written as PNG.

    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    """
    coordinates, description = scatter_coordinates(encode(guide, x, site=site, convention=convention))
    axis_labels = ("z₁", "z₂") if description == "z" else ("principal component 1", "principal component 2")
    title = title if description == "z" else f"{title}\n{description}"
    return plots.scatter(coordinates, None if labels is None else labels.cpu().numpy(), path, title, axis_labels)
