"""Per-datum evidence: the ELBO and the importance-sampled log-likelihood.

Pyro's ELBO classes return one number for a whole batch. Novelty scoring needs one number per
datum, so this module traces any model/guide pair that follows the pyro_vae convention and keeps
the ``"data"`` plate dimension instead of summing it away:

.. math::

    \\log w_k(x) = \\log p(x, z_k) - \\log q(z_k \\mid x), \\qquad z_k \\sim q(z \\mid x),

    \\mathrm{ELBO}(x) \\approx \\frac{1}{K} \\sum_k \\log w_k(x), \\qquad
    \\log p(x) \\approx \\operatorname{logsumexp}_k \\log w_k(x) - \\log K.

The second estimate is a lower bound in expectation that tightens as K grows (Burda et al. 2016,
"Importance Weighted Autoencoders"). The K particles are vectorized with an outer
``pyro.plate`` (as ``vectorize_particles`` does) and the work is split into chunks of at most
``max_batch`` (particle, datum) pairs, so memory stays bounded for any K and any data size.
Model and guide are called with ``size`` equal to the number of data in the chunk, and the
log-densities are taken unscaled, so neither minibatch scaling nor any ``poutine.scale`` used for
training (a KL weight, say) enters a score.

The convention: ``model(x, y=None, size=None)`` and ``guide(x, y=None, size=None)`` put every
per-datum sample site inside ``pyro.plate("data", size, subsample=x)``; the model observes ``"x"``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.progress import progress_bar

DATA_PLATE = "data"
OBSERVED_SITE = "x"
DEFAULT_MAX_BATCH = 1 << 14


def _data_dim(site: dict) -> int:
    for frame in site["cond_indep_stack"]:
        if frame.name == DATA_PLATE and frame.vectorized:
            return frame.dim
    raise ValueError(
        f"sample site {site['name']!r} is not inside a vectorized pyro.plate({DATA_PLATE!r}, ...); "
        "per-datum scores need every sample site of the model and guide inside that plate"
    )


def _per_datum(log_prob: torch.Tensor, particle_dim: int, data_dim: int, shape: tuple[int, int]) -> torch.Tensor:
    """Sum a site's log-density over every dimension except the particle and data dimensions."""
    log_prob = log_prob.reshape((1,) * max(0, -particle_dim - log_prob.dim()) + log_prob.shape)
    other_dims = [d for d in range(-log_prob.dim(), 0) if d not in (particle_dim, data_dim)]
    if other_dims:
        log_prob = log_prob.sum(other_dims, keepdim=True)
    return log_prob.reshape(log_prob.shape[particle_dim], log_prob.shape[data_dim]).expand(shape)


def _score_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def traces(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None):
    """The model's and the guide's trace on ``x`` (the model replaying the guide's draws, with
    ``size=len(x)``), without the plates' subsample sites."""
    size = x.shape[0]
    guide_trace = poutine.trace(guide).get_trace(x, y=y, size=size)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y=y, size=size)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def latent_sites(trace) -> dict[str, dict]:
    """The latent (unobserved, non-auxiliary) sample sites of a trace, by name."""
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site["infer"].get("is_auxiliary")
    }


def _check_structure(model_trace, guide_trace) -> None:
    site = model_trace.nodes.get(OBSERVED_SITE)
    if site is None or site["type"] != "sample" or not site["is_observed"]:
        raise ValueError(f"the model has no observed sample site named {OBSERVED_SITE!r}")
    missing = set(latent_sites(model_trace)) - set(latent_sites(guide_trace))
    if missing:
        raise ValueError(f"latent sites {sorted(missing)} of the model are not sampled by the guide")
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                _data_dim(site)


def max_plate_nesting(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> int:
    """The number of plate dimensions the model and guide use (at least 1), found by one trace."""
    with torch.no_grad(), poutine.block():
        pair = traces(model, guide, x[:2], None if y is None else y[:2])
    _check_structure(*pair)
    dims = [
        -frame.dim
        for trace in pair
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=1)


def check_observed_support(
    model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None, data: torch.Tensor | None = None
) -> constraints.Constraint | None:
    """Raise a clear error when data lie outside the support of the model's likelihood (e.g. grey
    pixels under a Bernoulli), instead of Pyro's dump of the offending tensor. The likelihood is
    found by tracing the model on ``x``; ``data`` (default ``x``), all of it, is then checked
    when the support does not depend on the parameters. Returns that support, to check more data
    with :func:`check_support` (``None`` when it depends on the parameters)."""
    with torch.no_grad(), poutine.block(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pyro.validation_enabled(False):
            model_trace, _ = traces(model, guide, x, y)
    site = model_trace.nodes[OBSERVED_SITE]
    fn = site["fn"]
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    if constraints.is_dependent(fn.support):
        check_support(site["fn"].support, site["value"], type(fn).__name__)
        return None
    check_support(fn.support, site["value"] if data is None else data, type(fn).__name__)
    return fn.support


def check_support(support: constraints.Constraint, data: torch.Tensor, family: str = "") -> None:
    """Raise a clear :class:`ValueError` if any of ``data`` lies outside ``support``."""
    inside = support.check(data)
    if inside.all():
        return
    outside = data[~inside] if inside.shape == data.shape else data.reshape(-1)[:0]
    examples = f", e.g. the values {sorted(set(outside[:1000].tolist()))[:5]}" if outside.numel() else ""
    raise ValueError(
        f"the data lie outside the support of the model's likelihood{' ' + family if family else ''} "
        f"({support}){examples}; "
        "binarize them (e.g. x > 0.5) or choose a likelihood for these values (continuous-bernoulli for [0, 1], "
        "gaussian for any real)"
    )


def _log_weights_chunk(
    model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None, num_particles: int, particle_dim: int
) -> torch.Tensor:
    with pyro.plate("_num_particles_vectorized", num_particles, dim=particle_dim):
        model_trace, guide_trace = traces(model, guide, x, y)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    shape = (num_particles, x.shape[0])
    log_w = torch.zeros(shape, dtype=_score_dtype(x), device=x.device)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site["infer"].get("is_auxiliary"):
                continue
            # Unscaled: a score is the model's own density, whatever poutine.scale (a β, a 1/N, a
            # hard-coded plate size) the model or guide applies for training.
            log_prob = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
            log_w = log_w + sign * _per_datum(log_prob, particle_dim, _data_dim(site), shape)
    return log_w


def iter_log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, log_w)`` chunks of the log importance weights, ``log_w`` shaped
    ``[particles, len(rows)]``; the particle chunks of one row block come one after another.

    :param int max_batch: the most (particle, datum) pairs evaluated at once; bounds memory.
    :param progress: show a progress bar (``None``: only on a terminal).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if x.shape[0] == 0:
        raise ValueError("cannot score an empty data set")
    particle_dim = -max_plate_nesting(model, guide, x, y) - 1
    particles_per_chunk = min(num_samples, max_batch)
    rows_per_chunk = max(1, max_batch // particles_per_chunk)
    bar = progress_bar(total=x.shape[0], desc=f"scoring (K={num_samples})", unit="datum", show=progress)
    with torch.no_grad(), bar:
        for start in range(0, x.shape[0], rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            x_rows, y_rows = x[rows], None if y is None else y[rows]
            for done in range(0, num_samples, particles_per_chunk):
                count = min(particles_per_chunk, num_samples - done)
                yield rows, _log_weights_chunk(model, guide, x_rows, y_rows, count, particle_dim)
            bar.update(x_rows.shape[0])


def log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
) -> torch.Tensor:
    """All log importance weights log p(x, z_k) - log q(z_k | x), shaped ``[num_samples, N]``."""
    columns: list[list[torch.Tensor]] = []
    last_start = None
    for rows, log_w in iter_log_weights(model, guide, x, y, num_samples, max_batch, progress):
        if rows.start != last_start:
            columns.append([])
            last_start = rows.start
        columns[-1].append(log_w)
    return torch.cat([torch.cat(parts, dim=0) for parts in columns], dim=1)


def elbo(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
) -> torch.Tensor:
    """Monte Carlo ELBO of every datum, in nats, shaped ``[N]``.

    :param model: a Pyro model following the pyro_vae convention.
    :param guide: its amortized guide.
    :param ~torch.Tensor x: data, ``[N, *event_shape]``.
    :param y: optional labels passed to model and guide.
    :param int num_samples: particles per datum.
    :param int max_batch: the most (particle, datum) pairs evaluated at once; bounds memory.
    :param progress: show a progress bar (``None``: only on a terminal).
    """
    total = torch.zeros(x.shape[0], dtype=_score_dtype(x), device=x.device)
    for rows, log_w in iter_log_weights(model, guide, x, y, num_samples, max_batch, progress):
        total[rows] += log_w.sum(0)
    return total / num_samples


def log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1000,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
) -> torch.Tensor:
    """Importance-sampled estimate of log p(x) for every datum, in nats, shaped ``[N]``,
    with the guide as proposal (Burda et al. 2016).

    The guide must put mass wherever the posterior does: with a point-mass guide (a Delta
    distribution) every weight is log p(x, ẑ), which is not an estimate of log p(x).

    Same arguments as :func:`elbo`; ``num_samples`` is K.
    """
    running = torch.full((x.shape[0],), -math.inf, dtype=_score_dtype(x), device=x.device)
    for rows, log_w in iter_log_weights(model, guide, x, y, num_samples, max_batch, progress):
        running[rows] = torch.logaddexp(running[rows], log_w.logsumexp(0))
    return running - math.log(num_samples)
