"""How far an importance-sampled log p(x) can be trusted: the Pareto-k̂ of its weights.

An importance-sampled estimate is only as good as the proposal: when q(z | x) misses part of the
posterior, a few weights dominate and the estimate is far too low with a small spread, which a
standard error would not reveal. Pareto-smoothed importance sampling (Vehtari et al. 2024,
"Pareto smoothed importance sampling", JMLR 25) fits a generalized Pareto distribution to the
largest weights of each datum; its shape k̂ says how heavy their tail is. Below 0.5 the estimate
converges fast; above :func:`reliable_k` = min(1 - 1/log10 K, 0.7) (0.5 for K = 100, 0.67
for K = 1000: the cut-off of Vehtari et al. and of ArviZ) it should not be trusted. With a
point-mass guide every weight is equal and k̂ is -inf, but the score is then log p(x, ẑ), not an
estimate of log p(x) at all. k̂ is computed with ArviZ's :func:`arviz.psislw`. Beside reference
data scored the same way, :func:`unreliable_cut` gives a cut that only estimates less reliable
than nearly all of the reference's exceed: an amortized guide seldom meets the absolute cut at a
few hundred weights.

:func:`importance_scores` returns the per-datum log p(x) with its k̂; :func:`to_inference_data`
stores scores and diagnostics as an ArviZ ``InferenceData`` (written to netCDF with
``.to_netcdf(path)``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pyro_vae.convention import Convention
from pyro_vae.scoring import DEFAULT_MAX_BATCH, log_weights, particle_logsumexp

UNRELIABLE_K = 0.7  # the cut-off for large K
REFERENCE_QUANTILE = 0.99  # an estimate is flagged beside a reference when its k̂ exceeds this share of the reference's
CONSTANT_SPREAD = 1e-8  # log weights closer than this (nats) count as equal
MIN_PARTICLES = 21  # PSIS fits the largest ⌈min(K/5, 3√K)⌉ weights and needs at least five


def _arviz():
    with warnings.catch_warnings():  # ArviZ announces its 1.0 refactor on import
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def pareto_k(log_w: torch.Tensor | np.ndarray) -> np.ndarray:
    """The Pareto-k̂ of each datum's importance weights; ``log_w`` is shaped ``[K, N]``
    (particles first, as :func:`pyro_vae.scoring.log_weights` returns them). Data whose weights
    are all equal get ``-inf``: their estimate is exact. With fewer than :data:`MIN_PARTICLES`
    particles the tail is too short to fit and every k̂ is NaN."""
    array = log_w.detach().cpu().double().numpy() if isinstance(log_w, torch.Tensor) else np.asarray(log_w, float)
    if array.ndim != 2:
        raise ValueError(f"log weights must be shaped [K, N], got {array.shape}")
    if array.shape[0] < MIN_PARTICLES:
        return np.full(array.shape[1], np.nan)
    with warnings.catch_warnings():  # ArviZ warns about few samples and large k̂; k̂ itself says so
        warnings.simplefilter("ignore")
        _, k_hat = _arviz().psislw(np.ascontiguousarray(array.T))
    k_hat = np.asarray(k_hat, dtype=np.float64)
    # Equal weights (the exact posterior as proposal) have no tail to fit: the estimate is exact.
    k_hat[np.ptp(array, axis=0) < CONSTANT_SPREAD] = -np.inf
    return k_hat


def reliable_k(num_samples: int) -> float:
    """The largest k̂ at which an estimate from ``num_samples`` weights is trusted:
    min(1 - 1/log10 K, 0.7)."""
    return min(1 - 1 / math.log10(num_samples), UNRELIABLE_K) if num_samples > 1 else -math.inf


def reference_quantile(reference_k: np.ndarray) -> float | None:
    """The :data:`REFERENCE_QUANTILE` quantile of reference k̂ values, one of the values itself
    (+inf, the most degenerate weights, and -inf, exact estimates, count; NaN, too few weights to
    fit, does not); ``None`` where no value is a number."""
    values = np.asarray(reference_k, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.quantile(values, REFERENCE_QUANTILE, method="higher")) if values.size else None


def unreliable_cut(num_samples: int, reference_k: np.ndarray | None = None) -> float:
    """The k̂ above which an estimate is called unreliable: :func:`reliable_k` on its own; beside
    the k̂ of reference data scored the same way (e.g. the training data a threshold was set on),
    the larger of that and the reference's :func:`reference_quantile`.

    A VAE's guide is rarely good enough for an absolutely reliable log p(x) at a few hundred
    weights (median k̂ 1.7 for MNIST test images at K = 100 under the image VAEs of
    ``experiments/image_ood.py``), so the absolute cut flags nearly every datum, normal or not, and
    says nothing about any one of them. Against the reference, a flag means "less reliable than
    nearly all of the reference's estimates", which is what matters for a ranking."""
    cut = reliable_k(num_samples)
    quantile = None if reference_k is None else reference_quantile(reference_k)
    return cut if quantile is None else max(cut, quantile)


@dataclass
class ImportanceScores:
    """Per-datum importance-sampled log p(x) and the Pareto-k̂ of its weights."""

    log_likelihood: np.ndarray
    pareto_k: np.ndarray
    num_samples: int

    @property
    def unreliable(self) -> np.ndarray:
        """Data whose estimate should not be trusted (k̂ above :func:`reliable_k`)."""
        return self.pareto_k > reliable_k(self.num_samples)


def importance_scores(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 1000,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
    *,
    convention: Convention | None = None,
    common_noise: int | None = None,
) -> ImportanceScores:
    """log p(x) of every datum (as :func:`pyro_vae.scoring.log_likelihood`, with the same keyword
    options) with its Pareto-k̂.

    Keeps all ``num_samples`` x N weights in memory (8 bytes each in the k̂ computation).
    """
    log_w = log_weights(
        model, guide, x, y, num_samples, max_batch, progress, convention=convention, common_noise=common_noise
    )
    log_px = (particle_logsumexp(log_w) - math.log(num_samples)).cpu().double().numpy()
    return ImportanceScores(log_px, pareto_k(log_w), num_samples)


def to_inference_data(per_datum: dict[str, np.ndarray], **attrs: float | int | str):
    """Per-datum arrays (scores, k̂, flags, ...) as an ArviZ ``InferenceData`` with one group,
    ``novelty``, whose variables have the dimension ``datum``; ``attrs`` (e.g. the threshold)
    become attributes of the group. Write it with ``.to_netcdf(path)``."""
    arviz = _arviz()
    dataset = arviz.dict_to_dataset(
        {name: np.asarray(values)[None, None] for name, values in per_datum.items()},
        dims={name: ["datum"] for name in per_datum},
        attrs=attrs,
        library=None,
    )
    return arviz.InferenceData(novelty=dataset)
