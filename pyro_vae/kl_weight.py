"""The KL weight β of a β-VAE (Higgins et al. 2017), as an effect handler, and its warm-up.

The β-weighted objective is E_q[log p(x | z)] - β KL(q(z | x) || p(z)). In a Pyro ELBO the KL
term is log p(z) - log q(z | x) at the latent sites (or the analytic KL of
``TraceMeanField_ELBO``), so β must scale the latent site in the model *and* in the guide; scaling
only the model's prior would also reweight the guide's entropy by 1/β. :class:`KLWeightMessenger`
is ``poutine.scale`` restricted to unobserved sample sites, applied to both.

Linear warm-up (Bowman et al. 2016; Sønderby et al. 2016) raises β from 0 to its final value over
the first epochs, which keeps the posterior from collapsing onto the prior early in training.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro.poutine.messenger import Messenger


class KLWeightMessenger(Messenger):
    """Multiply the log-density of every latent (unobserved, non-auxiliary) sample site by
    ``weight``. The weight may be changed between steps by assigning ``handler.weight``."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not msg["infer"].get("is_auxiliary"):
            msg["scale"] = self.weight * msg["scale"]


def kl_weighted(fn: Callable, handler: KLWeightMessenger) -> Callable:
    """Wrap a model or guide so that ``handler`` scales its latent sites."""

    def weighted(*args, **kwargs):
        with handler:
            return fn(*args, **kwargs)

    return weighted


def linear_warmup(progress: float, beta: float, warmup: float) -> float:
    """β after ``progress`` epochs when it rises linearly to ``beta`` over ``warmup`` epochs."""
    if warmup <= 0:
        return beta
    return beta * min(1.0, progress / warmup)
