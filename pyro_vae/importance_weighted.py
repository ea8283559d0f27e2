"""Importance-weighted training: the IWAE bound per datum, and its doubly reparameterized gradient.

For a minibatch of ``B`` of the ``N`` data and ``K`` draws ``z_ik ~ q(z | x_i)``,

.. math::

    \\mathcal L_K = G + \\frac{N}{B} \\sum_{i=1}^{B} \\log \\frac1K \\sum_{k=1}^{K} w_{ik},
    \\qquad \\log w_{ik} = \\log p(x_i, z_{ik}) - \\log q(z_{ik} \\mid x_i),

is an unbiased estimate of the sum over the data set of the per-datum bounds of Burda et al. (2016),
"Importance Weighted Autoencoders": the log-mean-exp is taken per datum, and the data plate's
minibatch factor ``N / B`` is applied outside it. Pyro's :class:`~pyro.infer.RenyiELBO` with
``alpha=0`` puts the factor inside, ``Σ_i log (1/K) Σ_k w_ik^(N/B)`` (pyro-ppl/pyro#3104): the
same for one datum without a minibatch factor, a different (and, in the minibatch's share of the
data, growing) quantity otherwise. Any other scale on a site (a KL weight β) stays inside the log
weight.

Global latent sites (outside the data plate) are drawn once per step and shared by the ``K``
particles, so ``G = log p(g) - log q(g)`` enters as in the ELBO and the bound holds for every
draw of them. Particles are vectorized with an outer plate where the program allows; a program
that fails with the extra dimension is evaluated one particle at a time.

:class:`DoublyReparameterizedELBO` has the same value and gives the gradient of Tucker et al.
(2019), "Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives": the guide's
score-function term is replaced by its reparameterized equivalent, whose variance vanishes as q
approaches the posterior. In surrogate form, with ``w~`` the normalized weights (held constant)
and the densities evaluated a second time at the draws held constant,

.. math::

    \\sum_k \\tilde w_k \\log p(x, \\bar z_k)
    + \\tilde w_k^2 \\big[\\log p(x, z_k) - \\log p(x, \\bar z_k)
    - \\log q(z_k \\mid x) + \\log q(\\bar z_k \\mid x)\\big],

which gives each parameter its direct gradient through the model weighted by ``w~`` and its
gradient through the draws weighted by ``w~²``, whether it belongs to the model, the guide or
both (a guide that shares the generative path).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.trace_struct import Trace

from pyro_vae.convention import DATA_PLATE
from pyro_vae.program import data_frame, plate_nesting, sample_sites, scales_itself
from pyro_vae.scoring import PARTICLE_PLATE, per_datum

VECTORIZATION_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


class _LogDensities(NamedTuple):
    """A pass of the guide and the model: the per-datum log-densities ``[K, B]`` of each (minibatch
    factor removed); what enters outside the log-mean-exp (the global sites' log p - log q and the
    model's auxiliary terms, means over the particles); the data plate's factor; and the guide's
    trace of each pass (one, or one per particle when they are evaluated one at a time)."""

    model: torch.Tensor
    guide: torch.Tensor
    outside: torch.Tensor
    factor: float
    guide_traces: tuple[Trace, ...]


class ImportanceWeightedELBO(ELBO):
    """The per-datum IWAE bound for any model/guide pair of the pyro_vae convention, for
    :class:`pyro.infer.SVI` or ``pyro_vae.fit(loss="iwae", num_particles=K)``.

    :param int num_particles: ``K``, the importance samples per datum.
    :param max_plate_nesting: the program's plate nesting (found from a trace when not given).
    :param bool vectorize_particles: evaluate the particles in one pass where the program allows.
    :param str data_plate: the name of the data plate.
    """

    def __init__(
        self,
        num_particles: int = 5,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
        data_plate: str = DATA_PLATE,
    ) -> None:
        if num_particles < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}")
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting)
        self.vectorize = vectorize_particles
        self.data_plate = data_plate
        self.global_sites: frozenset[str] | None = None  # found on the first call
        self.vectorized_once = False

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Minus the bound, without gradients."""
        with torch.no_grad():
            return -self._bound(self._densities(model, guide, args, kwargs)).item()

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        """Minus the bound, differentiable (its gradient is the IWAE estimator)."""
        return -self._bound(self._densities(model, guide, args, kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Minus the bound; accumulates the estimator's gradient into the parameters."""
        first = self._densities(model, guide, args, kwargs)
        bound = self._bound(first)
        (-self._surrogate(model, guide, args, kwargs, first, bound)).backward()
        return -bound.item()

    def _surrogate(self, model, guide, args, kwargs, first: _LogDensities, bound: torch.Tensor) -> torch.Tensor:
        return bound

    @staticmethod
    def _bound(pass_: _LogDensities) -> torch.Tensor:
        log_w = pass_.model - pass_.guide
        per_datum = log_w.logsumexp(0) - math.log(log_w.shape[0])
        return pass_.outside + pass_.factor * per_datum.sum()

    def _densities(self, model, guide, args, kwargs, replay: tuple[Trace, ...] | None = None) -> _LogDensities:
        """One pass of the ``K`` particles, replaying ``replay``'s draws if given (one trace for
        all particles, or one per particle)."""
        if self.global_sites is None:
            self._inspect(model, guide, args, kwargs)
        if replay is None and self.global_sites:
            replay = (self._global_draws(guide, args, kwargs),)
        if self.vectorize and (replay is None or len(replay) == 1):
            before = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
            try:
                with pyro.plate(PARTICLE_PLATE, self.num_particles, dim=-self.max_plate_nesting - 1):
                    densities = self._traced(model, guide, args, kwargs, replay and replay[0])
                self.vectorized_once = True
                return densities
            except VECTORIZATION_ERRORS:
                if self.vectorized_once:  # the error is not the particle dimension
                    raise
                self.vectorize = False
                torch.set_rng_state(before[0])  # the failed attempt's draws are not spent
                if before[1] is not None:
                    torch.cuda.set_rng_state_all(before[1])
        replays = [None] * self.num_particles if replay is None else list(replay) * (self.num_particles // len(replay))
        passes = [self._traced(model, guide, args, kwargs, trace) for trace in replays]
        return _LogDensities(
            torch.cat([p.model for p in passes]),
            torch.cat([p.guide for p in passes]),
            torch.stack([p.outside for p in passes]).mean(),
            passes[0].factor,
            tuple(p.guide_traces[0] for p in passes),
        )

    def _inspect(self, model, guide, args, kwargs) -> None:
        """Trace the pair once (from a fork of the random state) for its global latent sites and,
        when not given, its plate nesting."""
        with poutine.block(), torch.random.fork_rng(devices=[]):
            model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting = plate_nesting(model_trace, guide_trace)
        self.global_sites = frozenset(
            name
            for name, site in sample_sites(guide_trace).items()
            if not site["is_observed"] and data_frame(site, self.data_plate) is None
        )

    def _global_draws(self, guide, args, kwargs) -> Trace:
        """A trace of the guide holding only its global draws, to be shared by the particles."""
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
        for name in [name for name in trace.nodes if name not in self.global_sites]:
            trace.remove_node(name)
        return trace

    def _get_trace(self, model, guide, args, kwargs) -> tuple[Trace, Trace]:
        """The model's trace (replaying the guide's draws) and the guide's, of one pass."""
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        return model_trace, guide_trace

    def _traced(self, model, guide, args, kwargs, replay: Trace | None) -> _LogDensities:
        replayed = guide if replay is None else poutine.replay(guide, trace=replay)
        model_trace, guide_trace = self._get_trace(model, replayed, args, kwargs)
        self._check_reparameterized(guide_trace)
        size = kwargs.get("size")
        model_local, model_outside, factor = self._sums(model_trace, size, auxiliary_outside=True)
        guide_local, guide_global, _ = self._sums(guide_trace, size, auxiliary_outside=False)
        return _LogDensities(model_local, guide_local, model_outside - guide_global, factor, (guide_trace,))

    def _check_reparameterized(self, guide_trace: Trace) -> None:
        names = [name for name, site in sample_sites(guide_trace).items() if not site["fn"].has_rsample]
        if names:
            raise ValueError(
                f"importance-weighted training differentiates through the guide's draws, but the guide's sites "
                f"{names} cannot be reparameterized; use loss='auto' (or 'enum' for discrete sites; --loss on the "
                "command line)"
            )

    def _sums(
        self, trace: Trace, size: int | None, auxiliary_outside: bool
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The trace's per-datum log-densities ``[K, B]`` with the data plate's factor removed; the
        sum of its global ones (and, with ``auxiliary_outside``, of its auxiliary sites: terms
        that train but are no part of the density, such as M2's classification term), averaged
        over the particles; and the data plate's factor."""
        trace.compute_log_prob()
        particle_dim = -self.max_plate_nesting - 1
        local, outside, factor, rows = torch.zeros(()), torch.zeros(()), 1.0, None
        for site in sample_sites(trace).values():
            log_prob = site["log_prob"]
            particles = log_prob.shape[particle_dim] if log_prob.dim() >= -particle_dim else 1
            frame = data_frame(site, self.data_plate)
            if frame is None or (auxiliary_outside and site["infer"].get("is_auxiliary")):
                outside = outside + log_prob.sum() / particles
                continue
            rows = frame.size if frame.size != -1 else log_prob.shape[frame.dim]
            factor = minibatch_factor(frame, size, rows)
            local = local + per_datum(log_prob, particle_dim, frame.dim, (particles, rows)) / factor
        if rows is None:
            raise ValueError(f"the program has no sample site inside pyro.plate({self.data_plate!r}, ...)")
        return local.expand(-1, rows) if local.dim() == 2 else local.expand(1, rows), outside, factor


def minibatch_factor(frame, size: int | None, rows: int) -> float:
    """The factor by which the data plate scales a minibatch of ``rows`` data: ``N / B`` of a plate
    that subsamples (``pyro.plate(name, N, subsample=x)``), else ``size / rows`` as
    :func:`~pyro_vae.program.bind` scales a plate that stands for the batch alone
    (``pyro.plate(name, len(x))``, or ``pyro.plate(name)`` without a size)."""
    if scales_itself(frame, rows):
        return frame.full_size / frame.size
    return (size or rows) / rows


class DoublyReparameterizedELBO(ImportanceWeightedELBO):
    """:class:`ImportanceWeightedELBO` with the doubly reparameterized gradient (DReG, Tucker et
    al. 2019), ``pyro_vae.fit(loss="dreg", num_particles=K)``. Each step evaluates the pair a
    second time at the draws held constant. Global latent sites are refused: their draws carry
    the particles' weights into every datum's bound, which the identity behind DReG does not cover.
    """

    def _surrogate(self, model, guide, args, kwargs, first: _LogDensities, bound: torch.Tensor) -> torch.Tensor:
        if self.global_sites:
            raise ValueError(
                f"loss='dreg' covers per-datum latents only; the guide has global latent sites "
                f"{sorted(self.global_sites)}: use loss='iwae'"
            )
        fixed = self._densities(model, guide, args, kwargs, replay=tuple(map(_held, first.guide_traces)))
        log_w = (first.model - first.guide).detach()
        weights = torch.softmax(log_w, dim=0)
        path = (first.model - fixed.model) - (first.guide - fixed.guide)
        per_datum = weights * fixed.model + weights.square() * path
        return first.outside + first.factor * per_datum.sum()


def _held(trace: Trace) -> Trace:
    """A copy of ``trace`` whose sample values are held constant (detached)."""
    held = trace.copy()
    held.nodes = OrderedDict((name, dict(site)) for name, site in trace.nodes.items())
    for site in sample_sites(held).values():
        site["value"] = site["value"].detach()
    return held
