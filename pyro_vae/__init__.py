"""pyro_vae: variational autoencoders as Pyro programs.

The core works with any model/guide pair that follows one convention (:mod:`pyro_vae.convention`):
every per-datum sample site is inside the data plate (``pyro.plate("data", ...)``), the model
observes the data at one site (``"x"``, or its only observed one), and sites outside the plate are
global. Programs are called as their signatures allow (:mod:`pyro_vae.program`): ``model(x)``,
``model(xs, ys)`` or ``model(x, y=None, size=None)``.

- :func:`fit` trains by SVI (:mod:`pyro_vae.training`);
- :func:`elbo` and :func:`log_likelihood` score every datum (:mod:`pyro_vae.scoring`);
- :func:`save_checkpoint` / :func:`load_checkpoint` store and restore (:mod:`pyro_vae.checkpoint`);
- :class:`NoveltyDetector` scores tables by log p(x), scikit-learn style (:mod:`pyro_vae.novelty`).

Stock models and guides are in :mod:`pyro_vae.models` and :mod:`pyro_vae.guides`; they are built
on the core, which never imports them. Applications built from stock parts sit above both: the
command line (:mod:`pyro_vae.cli`, with ``python -m pyro_vae``) and the novelty detector
(:mod:`pyro_vae.novelty`). ``NoveltyDetector`` is therefore imported from here on first use, not
by ``import pyro_vae``.
"""

from pyro_vae.auxiliary import auxiliary
from pyro_vae.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.convention import Convention
from pyro_vae.rates import latent_rates
from pyro_vae.scoring import elbo, log_likelihood, log_weights
from pyro_vae.training import History, fit

__version__ = "0.1.0"
__all__ = [
    "Convention",
    "History",
    "NoveltyDetector",
    "auxiliary",
    "elbo",
    "fit",
    "latent_rates",
    "load_checkpoint",
    "log_likelihood",
    "log_weights",
    "save_checkpoint",
]


def __getattr__(name: str) -> type:
    """``pyro_vae.NoveltyDetector``: the application in :mod:`pyro_vae.novelty`, imported when it
    is first asked for, so that the core does not import the stock models it is built from."""
    if name == "NoveltyDetector":
        from pyro_vae.novelty import NoveltyDetector

        return NoveltyDetector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
