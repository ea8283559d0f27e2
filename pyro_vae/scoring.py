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
``max_batch`` (particle, datum) pairs, so memory stays bounded for any K and any data size. On
the CPU a chunk also holds at most :data:`CPU_CHUNK_BYTES` of data per tensor the size of its
copies of x: the C library's allocator maps larger blocks from the system afresh for every
tensor, page by page, which nearly doubled the time of the decoder's matrix products on MNIST
(``experiments/bench_score.py``).
Model and guide are called with ``size`` equal to the number of data in the chunk, and the
log-densities are taken unscaled, so neither minibatch scaling nor any ``poutine.scale`` used for
training (a KL weight, say) enters a score.

The convention (:mod:`pyro_vae.convention`): every per-datum sample site of the model and guide
is inside the data plate, and the model observes the data at one site. Sites outside the data
plate are global: each global latent is held at the mean of the guide's distribution for it (the
mean of 256 draws where the distribution has no ``mean``), in the model and the guide, and neither
its density nor any other site outside the plate enters a per-datum score, which is then
log p(x | globals). The particles are vectorized only where the program allows the extra leading
dimension; a program that fails with it (``nn.BatchNorm1d`` on its inputs, boolean-mask indexing,
a shape Pyro's checks reject) is evaluated one particle at a time, with the same estimates.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_site_shape

from pyro_vae.adaptive_k import MIN_FIRST_SAMPLES, RunningEstimate, open_rows
from pyro_vae.common_noise import CommonNoise, CommonNoiseError
from pyro_vae.convention import Convention
from pyro_vae.distributions import VALUE_WRAPPERS, mean_of
from pyro_vae.program import Inspection, data_frame, inspect_pair, trace_pair
from pyro_vae.progress import progress_bar
from pyro_vae.validation import check_data

DEFAULT_MAX_BATCH = 1 << 14
CPU_CHUNK_BYTES = 32 << 20  # glibc's largest mmap threshold: bigger blocks are mapped anew on each allocation
FIXED_SAMPLES = 1000  # log_likelihood's K
ADAPTIVE_FIRST_SAMPLES, ADAPTIVE_MAX_SAMPLES = 100, 5000  # with a tolerance: the first round's K, and the most
OBSERVED, LATENT, GUIDE, OBSERVED_TAIL = range(4)  # the terms of a log weight, and the tail (WeightTerms)
TAIL_FRACTION = 0.02  # the share of the observed data's values that make its tail (log_weight_terms)
INSPECTED_ROWS = 128  # the rows a scoring call traces to inspect the pair
PARTICLE_PLATE = "_num_particles_vectorized"


def per_datum(log_prob: torch.Tensor, particle_dim: int, data_dim: int, shape: tuple[int, int]) -> torch.Tensor:
    """Sum a site's log-density over every dimension except the particle and data dimensions."""
    log_prob = log_prob.reshape((1,) * max(0, -particle_dim - log_prob.dim()) + log_prob.shape)
    other_dims = [d for d in range(-log_prob.dim(), 0) if d not in (particle_dim, data_dim)]
    if other_dims:
        log_prob = log_prob.sum(other_dims, keepdim=True)
    return log_prob.reshape(log_prob.shape[particle_dim], log_prob.shape[data_dim]).expand(shape)


class TailError(ValueError):
    """An observed distribution that does not factorize over its values, so it has no tail."""


def value_log_densities(site: dict, particle_dim: int, data_dim: int, shape: tuple[int, int]) -> torch.Tensor:
    """The log-density of each value of an observed site, ``[particles, N, values]``: its
    distribution's ``Independent``, expansion and mask wrappers taken off down to a univariate one.
    Values a mask hides are ``+inf``, never among the lowest (:func:`lowest_sum` counts them 0)."""
    fn, event_dims = site["fn"], len(site["fn"].event_shape)
    hidden = _hidden(site["mask"], event_dims)
    while isinstance(fn, VALUE_WRAPPERS):
        if isinstance(fn, dist.MaskedDistribution):
            hidden = hidden | _hidden(fn._mask, len(fn.event_shape))
        fn = fn.base_dist
    if fn.event_shape:
        raise TailError(
            f"observed site {site['name']!r} has a {type(fn).__name__} over values shaped {tuple(fn.event_shape)}: "
            "its tail needs a distribution of independent values (a univariate one made .to_event(...))"
        )
    log_prob = fn.log_prob(site["value"])
    log_prob = torch.where(hidden.to(log_prob.device), math.inf, log_prob)  # broadcast either way
    log_prob = log_prob.reshape((1,) * max(0, event_dims - particle_dim - log_prob.dim()) + log_prob.shape)
    batch = log_prob.dim() - event_dims
    particle, data = batch + particle_dim, batch + data_dim
    other = [d for d in range(log_prob.dim()) if d not in (particle, data)]
    log_prob = log_prob.permute(particle, data, *other)
    return log_prob.expand(*shape, *log_prob.shape[2:]).reshape(*shape, -1)


def _hidden(mask: torch.Tensor | bool | None, event_dims: int) -> torch.Tensor:
    """Which values a site's or a distribution's mask hides, broadcastable against its batch and
    ``event_dims`` event dimensions (a mask covers only the batch)."""
    if isinstance(mask, torch.Tensor):
        return ~mask.reshape(mask.shape + (1,) * event_dims)
    return torch.tensor(mask is False)


def lowest_sum(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """The sum of the lowest ``fraction`` (at least one) of the last dimension of ``values``, in
    ascending order; a ``+inf`` (a hidden value) among them counts 0."""
    count = max(1, math.ceil(fraction * values.shape[-1] - 1e-9))
    lowest = values.topk(count, dim=-1, largest=False, sorted=True).values
    return lowest.masked_fill(lowest == math.inf, 0.0).sum(-1)


def _padded(rows: torch.Tensor, size: int) -> torch.Tensor:
    """``rows`` with its last row repeated up to ``size`` rows."""
    missing = size - rows.shape[0]
    return torch.cat([rows, rows[-1:].expand(missing, *rows.shape[1:])]) if missing > 0 else rows


def _by_datum(log_w: torch.Tensor) -> torch.Tensor:
    """``log_w`` (``[particles, N]``) as ``[N, particles]`` in contiguous memory, so that a
    reduction over the particles runs the same code path for every datum, wherever it sits among
    the N (a reduction across the rows handles the last few columns apart, with other roundings)."""
    return log_w.t().contiguous()


def particle_logsumexp(log_w: torch.Tensor) -> torch.Tensor:
    """logsumexp over the particles of ``log_w`` (``[particles, N]``), per datum along memory."""
    return _by_datum(log_w).logsumexp(1)


def traces(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None):
    """The model's and the guide's trace on ``x`` (the model replaying the guide's draws, with
    ``size=len(x)``), without the plates' subsample sites."""
    model_trace, guide_trace = trace_pair(model, guide, x, y, x.shape[0])
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


class _Scorer:
    """A pair ready to score: inspected once, its global latents held at the guide's means, and
    whether its particles can be vectorized (found on the first chunk)."""

    def __init__(self, inspection: Inspection) -> None:
        self.data_plate = inspection.convention.data_plate
        self.observed_site = inspection.observed_site
        self.particle_dim = -inspection.plate_nesting - 1
        self.vectorized = True
        model, guide = inspection.model, inspection.guide
        held = {name: mean_of(inspection.guide_trace.nodes[name]["fn"]) for name in inspection.global_latents}
        if held:
            model, guide = poutine.condition(model, data=held), poutine.condition(guide, data=held)
        self.model, self.guide = model, guide

    def log_weights(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        num_particles: int,
        noise: list[int] | None = None,
        terms: bool = False,
        tail_fraction: float | None = None,
    ) -> torch.Tensor:
        """log p(x, z_k) - log q(z_k | x) of ``num_particles`` draws per datum, ``[particles, N]``;
        with ``noise`` (a seed), the draws are common to all data (:mod:`pyro_vae.common_noise`).
        With ``terms``, its three terms apart and the observed data's tail (zero without a
        ``tail_fraction``), ``[4, particles, N]`` (see :class:`WeightTerms`)."""
        if self.vectorized:
            devices = [x.device] if x.device.type == "cuda" else []
            before = torch.get_rng_state(), [torch.cuda.get_rng_state(device) for device in devices]
            try:
                with (
                    poutine.block(),
                    self._noise(noise),
                    pyro.plate(PARTICLE_PLATE, num_particles, dim=self.particle_dim),
                ):
                    pair = traces(self.model, self.guide, x, y)
                return self._sum(*pair, x, num_particles, terms, tail_fraction, check_shapes=True)
            except (RuntimeError, ValueError, IndexError, TypeError) as error:  # no particle dimension
                if isinstance(error, (CommonNoiseError, TailError)):
                    raise
                self.vectorized = False
                torch.set_rng_state(before[0])  # the failed attempt's draws are not spent
                for device, state in zip(devices, before[1], strict=True):
                    torch.cuda.set_rng_state(state, device)
        with poutine.block():
            log_w = []
            for particle in range(num_particles):
                with self._noise(None if noise is None else [*noise, particle]):
                    log_w.append(self._sum(*traces(self.model, self.guide, x, y), x, 1, terms, tail_fraction))
            return torch.cat(log_w, dim=-2)

    def _noise(self, seed: list[int] | None):
        """Common noise from a generator seeded with ``seed`` (a no-op context without one)."""
        if seed is None:
            return contextlib.nullcontext()
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        return CommonNoise(self.data_plate, generator)

    def _sum(
        self,
        model_trace,
        guide_trace,
        x: torch.Tensor,
        particles: int,
        terms: bool,
        tail_fraction: float | None,
        check_shapes: bool = False,
    ) -> torch.Tensor:
        """The per-datum log-densities of the two traces: ``[4, particles, N]`` (observed, model
        latent and guide sites, and the observed data's tail, :class:`WeightTerms`) with
        ``terms``, else the log weight."""
        shape = (particles, x.shape[0])
        sums = torch.zeros((4, *shape), dtype=x.dtype, device=x.device)
        for trace, is_guide in ((model_trace, False), (guide_trace, True)):
            trace.compute_log_prob()
            for site in trace.nodes.values():
                if site["type"] != "sample" or site["infer"].get("is_auxiliary"):
                    continue
                frame = data_frame(site, self.data_plate)
                if frame is None:
                    continue  # a global site: held fixed, not part of a per-datum score
                if check_shapes:  # a program that folds the particle dimension into another one
                    check_site_shape(site, -self.particle_dim)
                # Unscaled: a score is the model's own density, whatever poutine.scale (a β, a 1/N, a
                # hard-coded plate size) the model or guide applies for training.
                log_prob = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
                term = GUIDE if is_guide else OBSERVED if site["is_observed"] else LATENT
                sums[term] += per_datum(log_prob, self.particle_dim, frame.dim, shape)
                if tail_fraction is not None and site["name"] == self.observed_site and not is_guide:
                    values = value_log_densities(site, self.particle_dim, frame.dim, shape)
                    sums[OBSERVED_TAIL] += lowest_sum(values, tail_fraction)
        return sums if terms else sums[OBSERVED] + sums[LATENT] - sums[GUIDE]


def iter_log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
    *,
    convention: Convention | None = None,
    common_noise: int | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, log_w)`` chunks of the log importance weights, ``log_w`` shaped
    ``[particles, len(rows)]``; the particle chunks of one row block come one after another. The
    data and the pair are checked when this is called, before the first chunk is asked for.

    :param int max_batch: the most (particle, datum) pairs evaluated at once; bounds memory.
    :param progress: show a progress bar (``None``: only on a terminal).
    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``
        (:class:`~pyro_vae.convention.Convention`).
    :param common_noise: a seed: every datum gets the same noise draws
        (:mod:`pyro_vae.common_noise`), and every row block is padded to one size, so that the
        arithmetic has the same shapes wherever a datum sits. A datum's weights are then
        bit-identical whether it is scored alone, with other data or in another order (for the
        same ``num_samples``, ``max_batch`` and device).
    """
    scorer = _checked_scorer(model, guide, x, y, num_samples, convention)
    return _chunks(scorer, x, y, num_samples, max_batch, progress, common_noise)


def _checked_scorer(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_samples: int,
    convention: Convention | None,
) -> _Scorer:
    """The pair inspected on the first rows of ``x``, after checking the data and the pair."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if x.shape[0] == 0:
        raise ValueError("cannot score an empty data set")
    check_data(x)
    first_x, first_y = x[:INSPECTED_ROWS], None if y is None else y[:INSPECTED_ROWS]
    inspection = inspect_pair(model, guide, first_x, first_y, convention=convention)
    inspection.require_whole_batch(first_x.shape[0])
    inspection.require_guide_covers_model()
    inspection.check_support(x)
    return _Scorer(inspection)


def chunk_shape(x: torch.Tensor, num_samples: int, max_batch: int = DEFAULT_MAX_BATCH) -> tuple[int, int]:
    """``(particles, rows)`` of one chunk of the scoring of ``x``: at most ``max_batch`` pairs,
    and on the CPU at most :data:`CPU_CHUNK_BYTES` of copies of x."""
    pairs = max_batch
    if x.device.type == "cpu":
        pairs = min(pairs, max(1, CPU_CHUNK_BYTES // max(1, x[0].numel() * x.element_size())))
    particles = min(num_samples, pairs)
    return particles, max(1, pairs // particles)


def _chunks(
    scorer: _Scorer,
    x: torch.Tensor,
    y: torch.Tensor | None,
    num_samples: int,
    max_batch: int,
    progress: bool | None,
    common_noise: int | None,
    terms: bool = False,
    tail_fraction: float | None = None,
    first_particle: int = 0,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """The chunks of :func:`iter_log_weights` (with ``terms``, of :func:`log_weight_terms`), for a
    pair already checked and inspected; with common noise, the particles are numbered from
    ``first_particle`` (later rounds of :func:`adaptive_log_likelihood` get fresh draws)."""
    particles_per_chunk, rows_per_chunk = chunk_shape(x, num_samples, max_batch)
    bar = progress_bar(total=x.shape[0], desc=f"scoring (K={num_samples})", unit="datum", show=progress)
    with torch.no_grad(), bar:
        for start in range(0, x.shape[0], rows_per_chunk):
            rows = slice(start, min(start + rows_per_chunk, x.shape[0]))
            x_rows, y_rows = x[rows], None if y is None else y[rows]
            if common_noise is not None:
                x_rows, y_rows = (
                    _padded(x_rows, rows_per_chunk),
                    None if y_rows is None else _padded(y_rows, rows_per_chunk),
                )
            for done in range(0, num_samples, particles_per_chunk):
                count = min(particles_per_chunk, num_samples - done)
                noise = None if common_noise is None else [common_noise, first_particle + done]
                # The first block runs under the caller's validation; the later ones skip Pyro's and
                # torch's argument checks (a third of the time), the support already checked on all x.
                checks = contextlib.nullcontext() if start == 0 and done == 0 else pyro.validation_enabled(False)
                with checks:
                    log_w = scorer.log_weights(x_rows, y_rows, count, noise, terms, tail_fraction)
                yield rows, log_w[..., : rows.stop - rows.start]
            bar.update(rows.stop - rows.start)


def log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
    *,
    convention: Convention | None = None,
    common_noise: int | None = None,
) -> torch.Tensor:
    """All log importance weights log p(x, z_k) - log q(z_k | x), shaped ``[num_samples, N]``."""
    chunks = iter_log_weights(
        model, guide, x, y, num_samples, max_batch, progress, convention=convention, common_noise=common_noise
    )
    return _collected(chunks)


class WeightTerms(NamedTuple):
    """The three terms of the log importance weights, each ``[num_samples, N]``:
    ``log_w = observed + latent - guide``; and the observed data's tail, if asked for."""

    observed: torch.Tensor  #: log p(x | z_k): the model's observed sites
    latent: torch.Tensor  #: log p(z_k): the model's latent sites
    guide: torch.Tensor  #: log q(z_k | x): the guide's sites
    #: the sum of the lowest ``tail_fraction`` of the log p(x_i | z_k) of the values x_i of the
    #: observed data (the pixels of an image): how badly the worst-explained part of x fits; None
    #: when no tail was asked for
    observed_tail: torch.Tensor | None = None

    @property
    def rate(self) -> torch.Tensor:
        """The Monte Carlo KL(q(z | x) || p(z)) of every datum, the ELBO's rate term, ``[N]``."""
        return _by_datum(self.guide - self.latent).mean(1)

    @property
    def tail(self) -> torch.Tensor:
        """The Monte Carlo mean of the observed tail of every datum, ``[N]``."""
        if self.observed_tail is None:
            raise ValueError("these terms have no tail: pass log_weight_terms a tail_fraction")
        return _by_datum(self.observed_tail).mean(1)


def log_weight_terms(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
    *,
    convention: Convention | None = None,
    common_noise: int | None = None,
    tail_fraction: float | None = None,
) -> WeightTerms:
    """:func:`log_weights` split into the model's observed and latent sites and the guide's
    (the distortion and rate of the ELBO come from them; Alemi et al. 2018, "Fixing a broken
    ELBO"); otherwise the same arguments. Sites outside the data plate enter none of them, as in
    every score here. With a ``tail_fraction`` (:data:`TAIL_FRACTION` in the typicality test), also
    the observed data's tail: the sum of the lowest ``tail_fraction`` (at least one) of the
    log-densities of its values, which needs a distribution that factorizes over them (a
    univariate one made ``.to_event``, ``.expand``-ed or ``.mask``-ed)."""
    if tail_fraction is not None and not 0 < tail_fraction <= 1:
        raise ValueError(f"tail_fraction must be in (0, 1], got {tail_fraction}")
    scorer = _checked_scorer(model, guide, x, y, num_samples, convention)
    chunks = _chunks(scorer, x, y, num_samples, max_batch, progress, common_noise, True, tail_fraction)
    observed, latent, guide_term, tail = _collected(chunks)
    return WeightTerms(observed, latent, guide_term, None if tail_fraction is None else tail)


def _collected(chunks: Iterator[tuple[slice, torch.Tensor]]) -> torch.Tensor:
    """The chunks of one call joined: particles along dimension -2, data along the last."""
    columns: list[list[torch.Tensor]] = []
    last_start = None
    for rows, log_w in chunks:
        if rows.start != last_start:
            columns.append([])
            last_start = rows.start
        columns[-1].append(log_w)
    return torch.cat([torch.cat(parts, dim=-2) for parts in columns], dim=-1)


def elbo(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
    *,
    convention: Convention | None = None,
    common_noise: int | None = None,
) -> torch.Tensor:
    """Monte Carlo ELBO of every datum, in nats, shaped ``[N]``.

    :param model: a Pyro model following the pyro_vae convention (:mod:`pyro_vae.convention`).
    :param guide: its amortized guide.
    :param ~torch.Tensor x: data, ``[N, *event_shape]``.
    :param y: optional labels passed to model and guide.
    :param int num_samples: particles per datum.
    :param int max_batch: the most (particle, datum) pairs evaluated at once; bounds memory.
    :param progress: show a progress bar (``None``: only on a terminal).
    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    :param common_noise: a seed for draws common to all data, making each datum's score
        independent of the others in the call (see :func:`iter_log_weights`).
    """
    chunks = iter_log_weights(
        model, guide, x, y, num_samples, max_batch, progress, convention=convention, common_noise=common_noise
    )  # checks x before the sums take its dtype
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for rows, log_w in chunks:
        total[rows] += _by_datum(log_w).sum(1)
    return total / num_samples


def log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
    *,
    convention: Convention | None = None,
    common_noise: int | None = None,
    tolerance: float | None = None,
    max_samples: int | None = None,
) -> torch.Tensor:
    """Importance-sampled estimate of log p(x) for every datum, in nats, shaped ``[N]``,
    with the guide as proposal (Burda et al. 2016).

    The guide must put mass wherever the posterior does: with a point-mass guide (a Delta
    distribution) every weight is log p(x, ẑ), which is not an estimate of log p(x).

    Same arguments as :func:`elbo`; ``num_samples`` is K (default 1000). With ``tolerance``
    (nats), K adapts per datum: :func:`adaptive_log_likelihood`, ``num_samples`` particles first
    (default 100) and at most ``max_samples`` (default 5000).
    """
    if tolerance is not None:
        first = ADAPTIVE_FIRST_SAMPLES if num_samples is None else num_samples
        most = ADAPTIVE_MAX_SAMPLES if max_samples is None else max_samples
        if first > most:
            raise ValueError(f"num_samples ({first}), the first round's K, exceeds max_samples ({most})")
        return adaptive_log_likelihood(
            model, guide, x, y, tolerance, first, most, max_batch, progress,
            convention=convention, common_noise=common_noise,
        ).log_likelihood  # fmt: skip
    if max_samples is not None:
        raise ValueError("max_samples bounds an adaptive K: pass tolerance too, or num_samples alone for a fixed K")
    num_samples = FIXED_SAMPLES if num_samples is None else num_samples
    chunks = iter_log_weights(
        model, guide, x, y, num_samples, max_batch, progress, convention=convention, common_noise=common_noise
    )  # checks x before the running sum takes its dtype
    running = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
    for rows, log_w in chunks:
        running[rows] = torch.logaddexp(running[rows], particle_logsumexp(log_w))
    return running - math.log(num_samples)


class AdaptiveEstimate(NamedTuple):
    """What :func:`adaptive_log_likelihood` found, per datum (each ``[N]``)."""

    log_likelihood: torch.Tensor  #: the estimate of log p(x), nats
    num_samples: torch.Tensor  #: the particles it took
    standard_error: torch.Tensor  #: the delta-method standard error of the estimate, nats


def adaptive_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    tolerance: float = 0.05,
    first_samples: int = ADAPTIVE_FIRST_SAMPLES,
    max_samples: int = ADAPTIVE_MAX_SAMPLES,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
    *,
    convention: Convention | None = None,
    common_noise: int | None = None,
) -> AdaptiveEstimate:
    """log p(x) of every datum with as many importance samples as it needs
    (:mod:`pyro_vae.adaptive_k`): ``first_samples`` for all, then rounds that double the count of
    every datum whose standard error is still above ``tolerance`` nats, up to ``max_samples``.

    Other arguments as :func:`log_likelihood`. With ``common_noise`` every round draws fresh
    common noise, and a datum's rounds depend on its own weights only, so its estimate is still
    independent of the other data in the call (for the same ``first_samples``, ``max_samples``,
    ``max_batch`` and device).
    """
    if not tolerance > 0:
        raise ValueError(f"tolerance must be a positive number of nats, got {tolerance}")
    if not MIN_FIRST_SAMPLES <= first_samples <= max_samples:
        raise ValueError(
            f"need {MIN_FIRST_SAMPLES} <= first_samples <= max_samples, got {first_samples} and {max_samples}"
        )
    scorer = _checked_scorer(model, guide, x, y, first_samples, convention)
    estimate = RunningEstimate(x.shape[0], x.dtype, x.device)
    rows, count = torch.arange(x.shape[0], device=x.device), first_samples
    while rows.numel():
        done = int(estimate.count[rows[0]])  # every open datum has had every round
        subset_y = None if y is None else y[rows]
        for block, log_w in _chunks(
            scorer, x[rows], subset_y, count, max_batch, progress, common_noise, first_particle=done
        ):
            estimate.add(rows[block], log_w)
        rows = open_rows(estimate, tolerance, max_samples)
        count = min(done + count, max_samples - done - count)
    return AdaptiveEstimate(estimate.log_mean(), estimate.count, estimate.standard_error())
