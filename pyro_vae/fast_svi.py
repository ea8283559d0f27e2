"""SVI steps with the ``Trace_ELBO`` estimator and less machinery per step.

For a guide whose latent sites are all reparameterizable, one-particle ``Trace_ELBO`` reduces to

.. math::

    -\\mathrm{ELBO} = \\sum_{\\text{guide sites}} s \\log q(z) - \\sum_{\\text{model sites}} s \\log p(\\cdot),
    \\qquad z \\sim q \\text{ by reparameterization},

with ``s`` each site's plate and ``poutine.scale`` factor, and its gradient is the pathwise one
(Kingma & Welling 2014). :class:`FastSVI` computes exactly that from the sample sites of the guide
and of the model replaying the guide's draws, recorded by a small messenger instead of two full
traces, and steps a :class:`pyro.optim.PyroOptim` (fit's :class:`~pyro_vae.optim.JointOptim`).
It leaves out what :class:`pyro.infer.SVI` with :class:`pyro.infer.Trace_ELBO` does on every step
and this case does not need: a third trace on every step to collect the parameters (here: the
tensors of Pyro's parameter store that received a gradient), a trace's copy of every message,
score-function terms, enumeration and shape checks, and Pyro's argument and support validation of
every distribution on every step (8 % of a step of a 784-400-50 MLP VAE at batch 128). Check the
data before: :func:`pyro_vae.fit` checks that the observed data lie in the likelihood's support,
all of it up front, or every minibatch of a ``Dataset`` or a ``transform``; a non-finite loss
still stops it.

:func:`unsupported_reason` says why a model/guide pair needs the full ``Trace_ELBO`` instead (a
latent or auxiliary site without ``rsample``, enumeration, a model latent site the guide does not
sample), so
:func:`pyro_vae.fit` can fall back to it.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.optim import PyroOptim
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyro_vae.scoring import latent_sites, traces

ENUMERATED = "is enumerated"  # how unsupported_reason ends for an enumerated guide site


def unsupported_reason(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> str | None:
    """``None`` if :class:`FastSVI` computes ``Trace_ELBO`` for this pair, else why not (found by
    tracing both on the data ``x``, ``y``)."""
    with torch.no_grad(), poutine.block():
        model_trace, guide_trace = traces(model, guide, x, y)
    sampled = {
        name: site for name, site in guide_trace.nodes.items() if site["type"] == "sample" and not site["is_observed"]
    }
    for name, site in sampled.items():
        if site["infer"].get("enumerate"):
            return f"guide site {name!r} {ENUMERATED}"
        if not getattr(site["fn"], "has_rsample", False):
            return f"guide site {name!r} ({type(site['fn']).__name__}) has no reparameterized sampler"
    missing = set(latent_sites(model_trace)) - set(latent_sites(guide_trace))
    if missing:
        return f"model latent sites {sorted(missing)} are not sampled by the guide"
    return None


class FastSVI:
    """One-particle SVI for reparameterizable guides, with the interface of :class:`pyro.infer.SVI`
    that :func:`pyro_vae.fit` uses (``step``, ``optim``).

    :param model: a Pyro model.
    :param guide: a guide whose latent sites all have ``rsample`` (see :func:`unsupported_reason`).
    :param optim: a :class:`pyro.optim.PyroOptim`.
    :param gradient_hook: called as ``gradient_hook(parameters, rows, loss)`` between the backward
        pass and the optimizer step, with ``rows`` the length of the step's first argument (the
        minibatch); it returns the loss to report. With a hook, every tensor of the parameter store
        is passed, sorted by name, so that all callers agree on the list;
        :class:`~pyro_vae.distributed.GradientAverager` averages over processes there.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optim: PyroOptim,
        gradient_hook: Callable[[list[torch.Tensor], int, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.guide = guide
        self.optim = optim
        self.gradient_hook = gradient_hook

    def loss(self, *args, **kwargs) -> torch.Tensor:
        """-ELBO of one particle, differentiable; equal to ``Trace_ELBO().loss`` on the same draws."""
        with pyro.validation_enabled(False):
            with _LogDensity(replay=None) as guide_terms:
                self.guide(*args, **kwargs)
            with _LogDensity(replay=guide_terms.latents) as model_terms:
                self.model(*args, **kwargs)
            return guide_terms.log_prob_sum() - model_terms.log_prob_sum()

    def step(self, *args, **kwargs) -> float:
        """Take one gradient step on the -ELBO; returns its value."""
        loss = self.loss(*args, **kwargs)
        loss.backward()
        store = pyro.get_param_store()
        if self.gradient_hook is None:
            parameters = [value for _, value in store.named_parameters() if value.grad is not None]
            reported = loss.detach()
        else:
            parameters = [value for _, value in sorted(store.named_parameters(), key=lambda item: item[0])]
            reported = self.gradient_hook(parameters, len(args[0]), loss.detach())
        self.optim(parameters)
        for parameter in parameters:
            parameter.grad = None
        return reported.item()


class _LogDensity(Messenger):
    """Records each sample site's distribution, value, ``poutine.scale`` factor and mask as it
    happens, and the latent draws (subsample indices included) by name; with ``replay`` (a guide's
    latent draws), the model's latent sites take those values, as
    :class:`~pyro.poutine.replay_messenger.ReplayMessenger` does. :meth:`log_prob_sum` is then
    what ``log_prob_sum`` of a :class:`~pyro.poutine.Trace` computes.

    It keeps only what the ELBO needs, instead of a trace's copy of every parameter and sample
    message: for a VAE, a fifth of the Python work of a step. The densities are computed after
    both programs have run, as from traces, so that autograd adds up the gradients in the same
    order and they equal ``Trace_ELBO``'s to the last bit.
    """

    def __init__(self, replay: dict[str, dict] | None) -> None:
        super().__init__()
        self.replay = replay
        self.latents: dict[str, dict] = {}
        self.sites: list[dict] = []

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
            self.sites.append(msg)

    def log_prob_sum(self) -> torch.Tensor | float:
        total = 0.0
        for site in self.sites:
            log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            total = total + scale_and_mask(log_p, site["scale"], site["mask"]).sum()
        return total
