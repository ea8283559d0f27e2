"""Adaptive K (pyro_vae.adaptive_k, scoring.adaptive_log_likelihood) against direct sums and the
closed-form log p(x) of probabilistic PCA."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae
from pyro_vae.adaptive_k import RunningEstimate
from pyro_vae.scoring import adaptive_log_likelihood
from tests.test_scoring import PPCA, SIGMA


@pytest.fixture(scope="module")
def ppca() -> PPCA:
    return PPCA()


def shrunk_guide(ppca: PPCA):
    """The exact posterior with its mean pulled halfway to 0: the proposal is worse the farther a
    datum's posterior lies from the origin, so data need different numbers of particles."""

    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            loc = 0.5 * (x - ppca.b) @ ppca.W @ ppca.M_inv.T
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=SIGMA**2 * ppca.M_inv))

    return guide


def test_the_running_sums_give_the_mean_and_the_delta_method_standard_error():
    log_w = torch.randn(300, 4, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0, 0.0], dtype=torch.float64) + 50
    estimate = RunningEstimate(4, torch.float64, "cpu")
    estimate.add(torch.arange(4), log_w[:100])
    estimate.add(torch.tensor([0, 1, 2, 3]), log_w[100:])
    expected = torch.logsumexp(log_w, 0) - math.log(300)
    assert torch.allclose(estimate.log_mean(), expected)
    w = np.exp(log_w.numpy() - 50)
    direct = w.std(0, ddof=1) / (math.sqrt(300) * w.mean(0))  # se of log mean(w) ≈ sd(w) / (√K mean(w))
    assert np.allclose(estimate.standard_error().numpy(), direct)
    assert estimate.standard_error()[3] == 0  # equal weights: exact


def test_each_datum_gets_the_particles_its_tolerance_needs(ppca):
    x = ppca.sample(40, seed=3)
    found = adaptive_log_likelihood(ppca.model, shrunk_guide(ppca), x, tolerance=0.02, first_samples=50)
    counts = found.num_samples
    assert counts.min() >= 50 and counts.max() <= 5000
    assert len(set(counts.tolist())) > 1  # not one K for all
    closed = counts < 5000
    assert (found.standard_error[closed] <= 0.02).all()
    # Every count is a doubling of the first round: 50, 100, 200, ... (or the cap).
    assert set(counts.tolist()) <= {50 * 2**i for i in range(7)} | {5000}
    error = (found.log_likelihood - ppca.log_px(x)).abs()
    assert (error[closed] < 5 * 0.02 + 0.01).all()


def test_the_exact_posterior_closes_every_datum_after_the_first_round(ppca):
    x = ppca.sample(10, seed=4)
    found = adaptive_log_likelihood(ppca.model, ppca.exact_guide, x, tolerance=1e-6, first_samples=30)
    assert (found.num_samples == 30).all() and (found.standard_error < 1e-6).all()
    assert torch.allclose(found.log_likelihood, ppca.log_px(x))


def test_with_common_noise_a_datum_scores_the_same_alone_or_in_a_batch(ppca):
    x = ppca.sample(30, seed=5)
    guide = shrunk_guide(ppca)
    together = adaptive_log_likelihood(ppca.model, guide, x, tolerance=0.02, first_samples=40, common_noise=7)
    for index in (0, 13, 29):
        alone = adaptive_log_likelihood(
            ppca.model, guide, x[index : index + 1], tolerance=0.02, first_samples=40, common_noise=7
        )
        assert torch.equal(alone.log_likelihood[0], together.log_likelihood[index])
        assert alone.num_samples[0] == together.num_samples[index]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_first_round_is_the_fixed_k_estimate(dtype):
    ppca = PPCA(dtype)
    x = ppca.sample(20, seed=6)
    guide = shrunk_guide(ppca)
    for k in (64, 858):  # float32 keeps math.log(K)'s rounding at any K
        fixed = pyro_vae.log_likelihood(ppca.model, guide, x, num_samples=k, common_noise=3)
        loose = pyro_vae.log_likelihood(ppca.model, guide, x, num_samples=k, common_noise=3, tolerance=1e9)
        assert torch.equal(fixed, loose)


def test_later_rounds_draw_the_particles_a_larger_fixed_k_would(ppca):
    """With one round's first particles filling one chunk, a datum that stopped at K particles got
    exactly the draws of a fixed K: the later rounds continue the particle numbering."""
    x = ppca.sample(30, seed=7)
    guide = shrunk_guide(ppca)
    found = adaptive_log_likelihood(
        ppca.model, guide, x, tolerance=0.04, first_samples=32, max_samples=512, max_batch=32, common_noise=5
    )
    counts = found.num_samples.tolist()
    assert len(set(counts)) > 2
    for count in set(counts):
        fixed = pyro_vae.log_likelihood(ppca.model, guide, x, num_samples=count, max_batch=32, common_noise=5)
        rows = found.num_samples == count
        assert torch.equal(found.log_likelihood[rows], fixed[rows])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tolerance": 0.0}, "tolerance"),
        ({"first_samples": 200, "max_samples": 100}, "first_samples"),
        ({"first_samples": 1}, "10 <= first_samples"),  # one weight has no spread: it would always stop
    ],
)
def test_bad_settings_are_refused(ppca, options, message):
    with pytest.raises(ValueError, match=message):
        adaptive_log_likelihood(ppca.model, ppca.exact_guide, ppca.sample(3, seed=0), **options)


def test_log_likelihood_takes_a_cap_only_with_a_tolerance(ppca):
    x = ppca.sample(3, seed=0)
    with pytest.raises(ValueError, match="pass tolerance too"):
        pyro_vae.log_likelihood(ppca.model, ppca.exact_guide, x, max_samples=100)
    with pytest.raises(ValueError, match="exceeds max_samples"):
        pyro_vae.log_likelihood(ppca.model, ppca.exact_guide, x, num_samples=200, tolerance=0.1, max_samples=100)
