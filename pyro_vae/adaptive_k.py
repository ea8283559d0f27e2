"""Adaptive K: as many importance samples per datum as its estimate of log p(x) needs.

A fixed K spends the same number of particles on every datum, though the spread of the log
weights, and so the error of log p̂(x) = log (1/K) Σ_k w_k, differs widely from datum to datum.
Here the particles come in rounds: every datum still open gets as many new ones as it has (the
count doubles), and a datum is closed once the standard error of its estimate is at most the
tolerance, or once it has ``max_samples``. The standard error is the delta method's (Owen 2013,
"Monte Carlo theory, methods and examples", section 9.2), from the running sums of w and w²:

.. math::

    \\operatorname{se}(\\log \\hat p)^2 \\approx \\frac{\\widehat{\\operatorname{Var}}(w)}{K \\hat p^2}
    = \\frac{1}{K - 1} \\left( \\frac{K \\sum_k w_k^2}{(\\sum_k w_k)^2} - 1 \\right),

kept in log space so that weights of any size are summed stably. Where the weights are
heavy-tailed (Pareto-k̂ above 0.7, :mod:`pyro_vae.diagnostics`) the sample variance understates
the error, so a small standard error is necessary, not sufficient, for a good estimate; and as
the stopping rule and the estimate use the same weights, a datum tends to stop on a lucky round
of low spread, which biases log p̂ slightly further down. At least :data:`MIN_FIRST_SAMPLES`
particles come first: from one weight the spread is always 0.

:class:`RunningEstimate` holds the sums; :func:`pyro_vae.scoring.log_likelihood` with
``tolerance`` runs the rounds.
"""

from __future__ import annotations

import math

import torch

MIN_FIRST_SAMPLES = 10  # fewer give a standard error too noisy to stop on


class RunningEstimate:
    """Running log Σ w, log Σ w² and the particle count of each of ``size`` data."""

    def __init__(self, size: int, dtype: torch.dtype, device: torch.device | str) -> None:
        self.log_sum = torch.full((size,), -math.inf, dtype=dtype, device=device)
        self.log_sum_squares = torch.full((size,), -math.inf, dtype=dtype, device=device)
        self.count = torch.zeros(size, dtype=torch.long, device=device)

    def add(self, rows: torch.Tensor, log_w: torch.Tensor) -> None:
        """Add the log weights ``log_w`` (``[particles, len(rows)]``) of the data ``rows``."""
        by_datum = log_w.t().contiguous()  # each datum reduced along memory: the same roundings wherever it sits
        self.log_sum[rows] = torch.logaddexp(self.log_sum[rows], by_datum.logsumexp(1))
        self.log_sum_squares[rows] = torch.logaddexp(self.log_sum_squares[rows], (2 * by_datum).logsumexp(1))
        self.count[rows] += log_w.shape[0]

    def log_mean(self) -> torch.Tensor:
        """log p̂(x) = log Σ w - log K of every datum."""
        # log K in float64, then rounded, as math.log(K) is: float32 sums keep fixed K's roundings
        return self.log_sum - self.count.double().log().to(self.log_sum.dtype)

    def standard_error(self) -> torch.Tensor:
        """The delta-method standard error of :meth:`log_mean` (see the module docstring); 0 where
        all of a datum's weights are equal, NaN where its weights are not finite."""
        count = self.count.to(self.log_sum.dtype)
        relative_variance = torch.expm1(self.log_sum_squares - 2 * self.log_sum + count.log()).clamp(min=0)
        return (relative_variance / (count - 1)).sqrt()


def open_rows(estimate: RunningEstimate, tolerance: float, max_samples: int) -> torch.Tensor:
    """The indices of the data that need more particles: standard error above ``tolerance`` (or
    not a number: weights that are not finite get no more) and fewer than ``max_samples``."""
    error = estimate.standard_error()
    finite = torch.isfinite(estimate.log_sum)
    return torch.nonzero(finite & (error > tolerance) & (estimate.count < max_samples)).flatten()
