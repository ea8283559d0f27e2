"""Image OOD corrections: input complexity and likelihood regret."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import scoring
from pyro_vae.ood import complexity_corrected, compressed_bits, likelihood_regret

W = torch.tensor([[1.5], [-0.5], [0.8]], dtype=torch.float64)  # 3-D data, 1-D latent
SIGMA = 0.3
POSTERIOR_VAR = SIGMA**2 / (W.T @ W + SIGMA**2).item()


def model(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, SIGMA).to_event(1), obs=x)


def exact_guide(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        loc = x @ W * POSTERIOR_VAR / SIGMA**2
        pyro.sample("z", dist.Normal(loc, math.sqrt(POSTERIOR_VAR)).to_event(1))


def prior_guide(x, y=None, size=None):
    """Ignores x: a guide that has learnt nothing."""
    with pyro.plate("data", size, subsample=x):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1, dtype=x.dtype), 1.0).to_event(1))


def data(n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    return z @ W.T + SIGMA * torch.randn(n, 3, generator=generator, dtype=torch.float64)


def test_no_regret_for_the_exact_posterior_and_much_for_a_blind_guide():
    x = data(200)
    exact = likelihood_regret(model, exact_guide, x, steps=100, num_samples=200, batch_size=64)
    blind = likelihood_regret(model, prior_guide, x, steps=100, num_samples=200, batch_size=64)
    assert exact.shape == (200,)
    assert abs(exact.mean().item()) < 0.05  # nothing to gain over the true posterior
    assert blind.mean().item() > 1.0  # the fit recovers what the blind guide misses
    assert (blind > exact).float().mean().item() > 0.9


def test_regret_needs_one_normal_site():
    def two_sites(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("a", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample("b", dist.Normal(torch.zeros(x.shape[0]), 1.0))

    def laplace(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("z", dist.Laplace(torch.zeros(x.shape[0], 1), 1.0).to_event(1))

    x = data(4).float()
    with pytest.raises(ValueError, match="per-datum latent sites"):
        likelihood_regret(model, two_sites, x, steps=1)
    with pytest.raises(ValueError, match="Normal guide site"):
        likelihood_regret(model, laplace, x, steps=1)


def test_compressed_length_tracks_complexity():
    generator = torch.Generator().manual_seed(0)
    flat = torch.zeros(1, 1, 28, 28)
    noise = torch.rand(1, 1, 28, 28, generator=generator)
    bits = compressed_bits(torch.cat([flat, noise]))
    assert bits[0] < bits[1] / 5
    assert bits[1] > 28 * 28 * 6  # uniform 8-bit noise does not compress much
    with pytest.raises(ValueError, match="images"):
        compressed_bits(torch.zeros(2, 784))


def test_complexity_correction_adds_the_length_in_nats():
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    log_px = torch.tensor([-10.0, -20.0, -30.0])
    corrected = complexity_corrected(log_px, images)
    assert np.allclose(corrected - log_px.numpy(), math.log(2) * compressed_bits(images))


def test_every_row_is_scored_with_its_own_fitted_guide_when_scoring_splits_the_rows(monkeypatch):
    """Scoring splits a block into chunks of at most CPU_CHUNK_BYTES of copies of x: the regret's
    blocks must fit one chunk, or the fitted guide hands a later chunk the first rows' parameters."""
    monkeypatch.setattr(scoring, "CPU_CHUNK_BYTES", 3 * 8 * 16 * 10)  # 10 rows of 16 particles per chunk
    x = data(60)
    exact = likelihood_regret(model, exact_guide, x, steps=50, num_samples=16, batch_size=1000)
    assert exact.abs().max().item() < 1.0, "a row scored with another row's fitted q loses far more"
