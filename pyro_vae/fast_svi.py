"""SVI steps with the ``Trace_ELBO`` estimator and less machinery per step, and the one place that
decides which estimator trains a model/guide pair.

For a guide whose latent sites are all reparameterizable, ``Trace_ELBO`` reduces to

.. math::

    -\\mathrm{ELBO} = \\sum_{\\text{guide sites}} s \\log q(z) - \\sum_{\\text{model sites}} s \\log p(\\cdot),
    \\qquad z \\sim q \\text{ by reparameterization},

with ``s`` each site's plate and ``poutine.scale`` factor, and its gradient is the pathwise one
(Kingma & Welling 2014). :class:`FastSVI` computes exactly that from the sample sites of the guide
and of the model replaying its draws, recorded by a small messenger instead of two full traces,
in ``Trace_ELBO``'s order of operations, so that its loss and gradients equal ``Trace_ELBO``'s to
the last bit on the same draws. It leaves out what :class:`pyro.infer.SVI` with ``Trace_ELBO``
does on every step and this case does not need: a third trace to collect the parameters, a
trace's copy of every message, score-function terms, and Pyro's argument and support validation
of every distribution on every step (8 % of a step of a 784-400-50 MLP VAE at batch 128).

It stops at the first site it cannot serve, before any gradient is taken, and hands that step and
every later one to :class:`pyro.infer.SVI` with the ELBO that serves it (:exc:`NotServed` says
which): ``TraceEnum_ELBO`` for an enumerated site, ``Trace_ELBO`` for a guide site without
``rsample``, a ``pyro.factor`` in the guide without ``has_rsample=True``, a model latent site the
guide does not sample, vectorized particles, or anything Pyro's own checks of the first batch
reject (mismatched shapes, a guide site the model lacks): there Pyro raises or warns as it would
have. The first batch is checked on the traces of :func:`pyro_vae.program.inspect_pair`; sites
that appear only later (the labels of a semi-supervised guide's first unlabelled batch) are caught
as they appear.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.optim import PyroOptim
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites, site_is_factor, site_is_subsample
from pyro.util import check_model_guide_match, check_site_shape

from pyro_vae.captured_step import CapturedSteps
from pyro_vae.kl_weight import KLWeightMessenger
from pyro_vae.optim import FusedAdam, JointOptim

GradientHook = Callable[[list[torch.Tensor], int, torch.Tensor], torch.Tensor]


class NotServed(Exception):
    """A site (or an option) that :class:`FastSVI` does not serve, and the ELBO that does."""

    def __init__(self, reason: str, elbo: type[ELBO] = Trace_ELBO) -> None:
        super().__init__(reason)
        self.reason = reason
        self.elbo = elbo


def _check_site(msg: dict, in_guide: bool, replay: dict | None) -> None:
    """Raise :exc:`NotServed` for a site whose term the pathwise estimator would get wrong."""
    name = msg["name"]
    if msg["infer"].get("enumerate"):
        raise NotServed(f"site {name!r} is enumerated", TraceEnum_ELBO)
    fn = msg["fn"]
    if in_guide:
        if site_is_factor(msg) and not fn.__dict__.get("has_rsample", False):
            raise NotServed(f"guide factor {name!r} is not marked has_rsample=True")
        if not msg["is_observed"] and not fn.has_rsample:
            raise NotServed(f"guide site {name!r} ({type(fn).__name__}) has no reparameterized sampler")
    elif not msg["is_observed"] and name not in replay:
        raise NotServed(f"model latent site {name!r} is not sampled by the guide")


def check_traces(model_trace: Trace, guide_trace: Trace, max_plate_nesting: int) -> None:
    """Raise :exc:`NotServed` unless :class:`FastSVI` computes ``Trace_ELBO`` on these traces of
    the pair: Pyro's own checks (with validation enabled) find no error or warning, and every
    site is served. Enumerated sites are looked for first: the traces are made without
    enumeration, on which Trace_ELBO's checks see a model-side enumerated site as a model latent
    the guide lacks (and would hand the pair to ``Trace_ELBO``, which samples it from the prior)."""
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if site["type"] == "sample" and site["infer"].get("enumerate"):
                raise NotServed(f"site {site['name']!r} is enumerated", TraceEnum_ELBO)
    if is_validation_enabled():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                check_model_guide_match(model_trace, guide_trace, max_plate_nesting)
                for trace in (model_trace, guide_trace):
                    trace = prune_subsample_sites(trace)
                    trace.compute_log_prob()
                    for site in trace.nodes.values():
                        if site["type"] == "sample":
                            check_site_shape(site, max_plate_nesting)
        except Exception as problem:  # Pyro's ELBO raises or warns the same itself
            raise NotServed(f"Pyro's checks of the program: {problem}") from None
    latents = {name for name, site in guide_trace.nodes.items() if site["type"] == "sample"}
    for trace, in_guide in ((guide_trace, True), (model_trace, False)):
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                _check_site(site, in_guide, latents)


class FastSVI:
    """SVI with the estimator :func:`pyro_vae.fit` chooses (``loss="auto"``): the pathwise
    ``Trace_ELBO`` with less work per step while the pair allows, else :class:`pyro.infer.SVI` with
    the ELBO that serves it, from the first step it does not serve on. It has the interface of
    :class:`pyro.infer.SVI` that ``fit`` uses (``step``, ``optim``).

    :param model: a Pyro model called as ``model(*args, **kwargs)``.
    :param guide: its guide.
    :param optim: a :class:`pyro.optim.PyroOptim` (fit's :class:`~pyro_vae.optim.JointOptim`).
    :param int max_plate_nesting: for the fallback ELBO.
    :param int num_particles: particles per step, evaluated one after another (as ``Trace_ELBO``
        does without ``vectorize_particles``).
    :param bool vectorize_particles: served by the fallback ELBO.
    :param traces: the model's and the guide's trace on a first batch
        (:attr:`pyro_vae.program.Inspection.model_trace`), checked with :func:`check_traces`.
    :param gradient_hook: called as ``gradient_hook(parameters, rows, loss)`` between the backward
        pass and the optimizer step, with ``rows`` the length of the step's first argument (the
        minibatch); it returns the loss to report. With a hook, every parameter the step used is
        passed, with or without a gradient, sorted by its name in Pyro's store, so that all
        processes agree on the list;
        :class:`~pyro_vae.distributed.GradientAverager` averages over processes there. A pair that
        needs the fallback cannot have one.
    :param bool capture: record the step once per input signature and replay it
        (:mod:`pyro_vae.captured_step`), where :meth:`capture_refusal` finds nothing against it.
    :param kl_weight: the KL-weight handler wrapped around the pair, if any: a live input of a
        recorded step (a handler not passed here has its weight frozen into the recording).
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optim: PyroOptim,
        *,
        max_plate_nesting: int = 1,
        num_particles: int = 1,
        vectorize_particles: bool = False,
        traces: tuple[Trace, Trace] | None = None,
        gradient_hook: GradientHook | None = None,
        capture: bool = False,
        kl_weight: KLWeightMessenger | None = None,
    ) -> None:
        self.model = model
        self.guide = guide
        self.optim = optim
        self.max_plate_nesting = max_plate_nesting
        self.num_particles = num_particles
        self.vectorize_particles = vectorize_particles
        self.gradient_hook = gradient_hook
        self.fallback: SVI | None = None
        self.fallback_elbo: ELBO | None = None
        self.fallback_reason: str | None = None
        try:
            if vectorize_particles and num_particles > 1:
                raise NotServed("vectorized particles")
            if traces is not None:
                check_traces(*traces, max_plate_nesting)
        except NotServed as reason:
            self._fall_back(reason)
        refusal = self.capture_refusal() if capture else "not asked for"
        self.captured = CapturedSteps(self, kl_weight) if refusal is None else None

    def capture_refusal(self) -> str | None:
        """Why this stepper's step cannot be recorded and replayed, or ``None`` if it can."""
        if self.fallback is not None:
            return f"the pair trains with {self.estimator}"
        if not isinstance(self.optim, JointOptim) or self.optim.pt_optim_constructor is not FusedAdam:
            return "the optimizer is not the fused Adam"
        if self.optim.clip_norm is not None:
            return "gradients are clipped"
        if self.gradient_hook is not None:
            return "gradients are averaged across processes"
        if self.num_particles != 1:
            return "more than one particle per step"
        return None

    @property
    def estimator(self) -> str:
        """The estimator in use: ``"FastSVI"``, or the fallback ELBO's class name."""
        return "FastSVI" if self.fallback_elbo is None else type(self.fallback_elbo).__name__

    def _fall_back(self, reason: NotServed) -> None:
        if self.gradient_hook is not None:
            raise ValueError(
                f"distributed training needs a reparameterizable guide, but {reason.reason}; train in one process"
            )
        elbo = reason.elbo(
            num_particles=self.num_particles,
            vectorize_particles=self.vectorize_particles,
            max_plate_nesting=self.max_plate_nesting,
        )
        self.fallback = SVI(self.model, self.guide, self.optim, elbo)
        self.fallback_elbo, self.fallback_reason = elbo, reason.reason

    def _particle(self, *args, **kwargs) -> tuple[float, torch.Tensor, dict[int, torch.Tensor]]:
        """One particle's -ELBO as ``Trace_ELBO`` reports it (a float), its differentiable
        surrogate, summed in ``Trace_ELBO``'s order, and the (unconstrained) parameters the
        programs used, by identity: the pair's own, each once, as ``SVI`` collects them."""
        model_sums, guide_sums, parameters = self._log_prob_sums(*args, **kwargs)
        elbo = _difference(model_sums, guide_sums, torch_item)
        return -elbo, -_difference(model_sums, guide_sums), parameters

    def _log_prob_sums(self, *args, **kwargs) -> tuple[list[torch.Tensor], list[torch.Tensor], dict]:
        """The model's and the guide's site log-densities (scaled and summed, each in its trace's
        order) on one particle, and the parameters the programs used."""
        with pyro.validation_enabled(False):
            with _LogDensity(replay=None) as guide_terms:
                self.guide(*args, **kwargs)
            with _LogDensity(replay=guide_terms.latents) as model_terms:
                self.model(*args, **kwargs)
            model_sums, guide_sums = list(model_terms.log_prob_sums()), list(guide_terms.log_prob_sums())
        return model_sums, guide_sums, guide_terms.parameters | model_terms.parameters

    def loss(self, *args, **kwargs) -> torch.Tensor:
        """-ELBO of one particle, differentiable; raises :exc:`NotServed` for a pair it does not serve."""
        return self._particle(*args, **kwargs)[1]

    def step(self, *args, **kwargs) -> float:
        """Take one gradient step on the -ELBO; returns its value."""
        if self.fallback is None:
            try:
                if self.captured is not None:
                    return self.captured.step(args, kwargs)
                return self.eager_step(*args, **kwargs)[0]
            except NotServed as reason:
                self.captured = None
                self._fall_back(reason)
        return self.fallback.step(*args, **kwargs)

    def graph_step(self, *args, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The eager step of one particle, without a gradient hook, written for recording
        (:mod:`pyro_vae.captured_step`): the same operations, with the -ELBO summed as a float64
        tensor in the order in which :meth:`eager_step` adds the Python floats, and the gradients
        from :func:`torch.autograd.grad`. Returns the -ELBO and the parameters used."""
        model_sums, guide_sums, used = self._log_prob_sums(*args, **kwargs)
        elbo = _difference(model_sums, guide_sums, torch.Tensor.double)
        surrogate = -_difference(model_sums, guide_sums) / 1  # the eager step's division by one particle
        parameters = list(used.values())
        if getattr(surrogate, "requires_grad", False):
            gradients = torch.autograd.grad(surrogate, parameters, allow_unused=True)
            for parameter, gradient in zip(parameters, gradients, strict=True):
                parameter.grad = gradient
        self.optim([value for value in parameters if value.grad is not None])
        for parameter in parameters:
            parameter.grad = None
        return torch.as_tensor(0.0 - elbo, dtype=torch.float64).detach(), parameters  # a float with no sites

    def eager_step(self, *args, **kwargs) -> tuple[float, list[torch.Tensor]]:
        """Take one gradient step; returns the -ELBO and the parameters the step used."""
        loss, used = 0.0, {}
        for _ in range(self.num_particles):
            try:
                particle_loss, surrogate, parameters = self._particle(*args, **kwargs)
            except NotServed:
                for parameter in used.values():  # earlier particles' gradients must not reach the fallback's step
                    parameter.grad = None
                raise
            used.update(parameters)
            loss += particle_loss / self.num_particles
            if getattr(surrogate, "requires_grad", False):
                (surrogate / self.num_particles).backward()
        if self.gradient_hook is None:
            parameters = [value for value in used.values() if value.grad is not None]
        else:
            names = pyro.get_param_store()._param_to_name
            parameters = sorted(used.values(), key=lambda value: names[value])
            loss = self.gradient_hook(parameters, len(args[0]), torch.tensor(loss)).item()
        self.optim(parameters)
        for parameter in used.values():
            parameter.grad = None
        return loss, list(used.values())


def _difference(model_sums: list[torch.Tensor], guide_sums: list[torch.Tensor], term: Callable = lambda log_p: log_p):
    """``Σ model - Σ guide`` of ``term`` of each site's sum (itself, a Python float, a float64
    tensor), added up term by term from 0 in ``Trace_ELBO``'s order."""
    total = 0
    for log_p in model_sums:
        total = total + term(log_p)
    for log_p in guide_sums:
        total = total - term(log_p)
    return total


class _LogDensity(Messenger):
    """Records each sample site's distribution, value, ``poutine.scale`` factor and mask as it
    happens, and the latent draws (subsample indices included) by name; with ``replay`` (a guide's
    latent draws), the model's latent sites take those values, as
    :class:`~pyro.poutine.replay_messenger.ReplayMessenger` does. Each site is checked with
    :func:`_check_site` as it happens. :meth:`log_prob_sums` are then the ``log_prob_sum`` of
    each site of a :class:`~pyro.poutine.Trace`, in its order.

    It keeps only what the ELBO needs, instead of a trace's copy of every parameter and sample
    message: for a VAE, a fifth of the Python work of a step. It also keeps the parameters the
    program used (each tensor once, however many names it has in Pyro's store), which are the
    ones a step updates. The densities are computed after
    both programs have run, as from traces, so that autograd adds up the gradients in the same
    order and they equal ``Trace_ELBO``'s to the last bit.
    """

    def __init__(self, replay: dict[str, dict] | None) -> None:
        super().__init__()
        self.replay = replay
        self.latents: dict[str, dict] = {}
        self.sites: list[dict] = []
        self.parameters: dict[int, torch.Tensor] = {}

    def _pyro_post_param(self, msg: dict) -> None:
        unconstrained = msg["value"].unconstrained()
        self.parameters[id(unconstrained)] = unconstrained

    def _pyro_sample(self, msg: dict) -> None:
        if self.replay is None or msg["is_observed"]:
            return
        drawn = self.replay.get(msg["name"])
        if drawn is not None:
            msg["value"], msg["infer"], msg["done"] = drawn["value"], drawn["infer"], True

    def _pyro_post_sample(self, msg: dict) -> None:
        if msg["infer"].get("_do_not_trace"):
            return
        if not msg["is_observed"]:  # subsample indices too: the model replays the guide's
            self.latents[msg["name"]] = msg
        if not site_is_subsample(msg):
            _check_site(msg, self.replay is None, self.replay)
            self.sites.append(msg)

    def log_prob_sums(self):
        for site in self.sites:
            log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            yield scale_and_mask(log_p, site["scale"], site["mask"]).sum()
