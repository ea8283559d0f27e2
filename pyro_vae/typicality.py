"""A typicality test for images: are x's statistics under the model like those of normal images?

A likelihood ranks novel images wrongly in both directions: a model of Fashion-MNIST gives
MNIST's simpler digits a *higher* log p(x) than its own test images (Nalisnick et al. 2019, "Do
deep generative models know what they don't know?"), and the input-complexity correction of
:mod:`pyro_vae.ood` (log p(x) + L(x)) fails the other way, where the novel images are more
complex than the training images. Normal data do not have the highest likelihood; they occupy a
*typical* region of it (Nalisnick et al. 2019b, "Detecting out-of-distribution inputs to deep
generative models using typicality"). Morningstar et al. 2021 ("Density of states estimation for
out of distribution detection", DoSE) make the test multivariate: fit a density to several of the
model's statistics of held-out normal data and score an input by the density of its statistics,
so that an image atypical in any direction scores low.

The statistics of an image x here (:func:`image_statistics`), from one set of importance weights:

- the importance-sampled log p(x) (:mod:`pyro_vae.scoring`);
- the rate, the Monte Carlo KL(q(z | x) || p(z)) (:class:`~pyro_vae.scoring.WeightTerms`): how
  far the guide has to move from the prior to explain x;
- the input complexity L(x), the PNG length in nats (Serrà et al. 2020), which says how much of
  log p(x) any model would give x;
- the tail, the sum of the lowest 2 % of the pixels' log p(x_i | z) (Monte Carlo mean over the
  guide's draws; :class:`~pyro_vae.scoring.WeightTerms`): how badly the worst-explained part of x
  fits. A novel image often differs from normal ones in a few places (a stroke thicker than any in
  training, a shape the decoder cannot draw) that a sum over all pixels averages away. The 2 %
  (:data:`~pyro_vae.scoring.TAIL_FRACTION`) was chosen among 0.5-10 % on one seed of
  ``experiments/image_ood.py``. The tail needs p(x | z) to factorize over the pixels, as every
  stock likelihood does; another observation is refused with a
  :class:`~pyro_vae.scoring.TailError` that names the site.

:class:`TypicalityTest` standardizes the statistics of held-out images of the training
distribution (images the model was not fitted to: it gives its own training images more
likelihood than new ones) and fits a Gaussian mixture to them, the number of components (1 to
``max_components``) chosen by BIC on those images alone. The score of x is the log-density of its
statistics under the mixture: higher is more typical. Nothing about the novel data is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.exceptions import NotFittedError
from sklearn.mixture import GaussianMixture

from pyro_vae.convention import Convention
from pyro_vae.ood import compressed_bits
from pyro_vae.scoring import TAIL_FRACTION, log_weight_terms, particle_logsumexp

STATISTICS = ("log_likelihood", "rate", "complexity", "tail")
NOISE_SEED = 0  # every image gets the same importance-sampling draws, so its score is its own


def image_statistics(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 100,
    *,
    convention: Convention | None = None,
    progress: bool | None = False,
) -> np.ndarray:
    """The :data:`STATISTICS` of every image of ``x`` (``[N, channels, height, width]``, in
    [0, 1]), in nats, shaped ``[N, 4]``, from ``num_samples`` importance weights per image."""
    if x.dim() != 4:
        raise ValueError(f"the typicality test takes images shaped [N, channels, height, width], got {tuple(x.shape)}")
    terms = log_weight_terms(
        model,
        guide,
        x,
        y,
        num_samples,
        progress=progress,
        convention=convention,
        common_noise=NOISE_SEED,
        tail_fraction=TAIL_FRACTION,
    )
    log_px = particle_logsumexp(terms.observed + terms.latent - terms.guide) - math.log(num_samples)
    statistics = [
        log_px.double().cpu().numpy(),
        terms.rate.double().cpu().numpy(),
        math.log(2) * compressed_bits(x),
        terms.tail.double().cpu().numpy(),
    ]
    return np.stack(statistics, axis=1)


def mixture_log_density(mixture: GaussianMixture, points: np.ndarray) -> np.ndarray:
    """``mixture.score_samples(points)`` (full covariances) computed row by row, with no matrix
    product whose blocking depends on the number of rows, so that a point's density is
    bit-identical whichever other points are scored with it."""
    centred = points[:, None, :] - mixture.means_[None]  # [N, components, dims]
    whitened = (centred[..., None] * mixture.precisions_cholesky_[None]).sum(axis=2)
    log_det = np.log(np.diagonal(mixture.precisions_cholesky_, axis1=1, axis2=2)).sum(axis=1)
    dims = points.shape[1]
    log_joint = np.log(mixture.weights_) + log_det - 0.5 * (dims * math.log(2 * math.pi) + (whitened**2).sum(axis=2))
    return logsumexp(log_joint, axis=1)


class TypicalityTest:
    """The typicality score of images under a trained pair (see the module docstring).

    :param model: a Pyro model following the convention (:mod:`pyro_vae.convention`).
    :param guide: its amortized guide.
    :param int num_samples: importance samples K per image.
    :param int max_components: the most Gaussian components BIC may choose.
    :param convention: the program's names, if not the default ones.
    :param progress: show progress bars (``None``: only on a terminal).

    After :meth:`fit`: ``mixture_`` (scikit-learn's ``GaussianMixture``, on standardized
    statistics), ``location_`` and ``scale_`` (the standardization) and ``reference_``, the
    scores of the held-out images, to set a threshold with.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        *,
        num_samples: int = 100,
        max_components: int = 6,
        convention: Convention | None = None,
        progress: bool | None = False,
    ) -> None:
        self.model, self.guide = model, guide
        self.num_samples, self.max_components = num_samples, max_components
        self.convention, self.progress = convention, progress

    def statistics(self, x: torch.Tensor, y: torch.Tensor | None = None) -> np.ndarray:
        """:func:`image_statistics` of ``x`` under this test's pair."""
        return image_statistics(
            self.model, self.guide, x, y, self.num_samples, convention=self.convention, progress=self.progress
        )

    def fit(self, held_out: torch.Tensor, y: torch.Tensor | None = None) -> TypicalityTest:
        """Fit the mixture to the statistics of ``held_out``: normal images the pair was not
        trained on (at least 10; a few hundred or more make a steady test)."""
        if held_out.shape[0] < 10:
            raise ValueError(f"the typicality test needs at least 10 held-out images, got {held_out.shape[0]}")
        statistics = self.statistics(held_out, y)
        self.location_, self.scale_ = statistics.mean(0), statistics.std(0)
        self.scale_[self.scale_ == 0] = 1.0
        standard = (statistics - self.location_) / self.scale_
        # A fixed seed of the mixture's own: the caller's generators are not touched.
        mixtures = [
            GaussianMixture(components, covariance_type="full", random_state=0).fit(standard)
            for components in range(1, min(self.max_components, len(standard) // 10) + 1)
        ]
        self.mixture_ = min(mixtures, key=lambda mixture: mixture.bic(standard))
        self.reference_ = mixture_log_density(self.mixture_, standard)
        return self

    def score_statistics(self, statistics: np.ndarray) -> np.ndarray:
        """The log-density of ``statistics`` (``[N, 4]``, from :meth:`statistics`) under the
        fitted mixture: higher is more typical."""
        return mixture_log_density(self.mixture_, (statistics - self.location_) / self.scale_)

    def score(self, x: torch.Tensor, y: torch.Tensor | None = None) -> np.ndarray:
        """The typicality score of every image of ``x``: higher is more typical."""
        if not hasattr(self, "mixture_"):
            raise NotFittedError("call fit(held_out) with held-out normal images before score")
        return self.score_statistics(self.statistics(x, y))
