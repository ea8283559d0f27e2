"""The per-datum ELBO and importance-sampled log p(x) against closed forms.

Probabilistic PCA (Tipping & Bishop 1999) has p(x) = N(b, W Wᵀ + σ² I) and the Gaussian posterior
q*(z | x) = N(M⁻¹ Wᵀ (x - b), σ² M⁻¹) with M = Wᵀ W + σ² I. With q* as proposal every importance
weight equals p(x), so both estimates must be exact; with a trained amortized guide the estimates
must be ordered ELBO ≤ IS ≤ exact (up to Monte Carlo error).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyro_vae
from pyro_vae.convention import Convention
from pyro_vae.diagnostics import importance_scores
from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VAE
from pyro_vae.scoring import CPU_CHUNK_BYTES, chunk_shape, iter_log_weights, log_weights
from tests.conftest import DEVICES

DATA_DIM, LATENT_DIM, SIGMA = 5, 2, 0.5


class PPCA:
    """A fixed linear-Gaussian model, its exact posterior as a guide, and its exact log p(x)."""

    def __init__(self, dtype: torch.dtype = torch.float64, device: str = "cpu") -> None:
        generator = torch.Generator().manual_seed(1)
        self.W = torch.randn(DATA_DIM, LATENT_DIM, generator=generator, dtype=dtype).to(device)
        self.b = torch.randn(DATA_DIM, generator=generator, dtype=dtype).to(device)
        M = self.W.T @ self.W + SIGMA**2 * torch.eye(LATENT_DIM, dtype=dtype, device=device)
        self.M_inv = torch.linalg.inv(M)

    def model(self, x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(self.b[:LATENT_DIM]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, SIGMA).to_event(1), obs=x)

    def exact_guide(self, x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            loc = (x - self.b) @ self.W @ self.M_inv.T
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=SIGMA**2 * self.M_inv))

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        covariance = self.W @ self.W.T + SIGMA**2 * torch.eye(DATA_DIM, dtype=x.dtype, device=x.device)
        return dist.MultivariateNormal(self.b, covariance_matrix=covariance).log_prob(x)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n, LATENT_DIM, generator=generator, dtype=self.b.dtype)
        noise = SIGMA * torch.randn(n, DATA_DIM, generator=generator, dtype=self.b.dtype)
        return (z @ self.W.T.cpu() + self.b.cpu() + noise).to(self.b.device)


@pytest.fixture(scope="module")
def ppca() -> PPCA:
    return PPCA()


@pytest.mark.parametrize("device", DEVICES)
def test_exact_posterior_gives_exact_log_likelihood(device):
    ppca = PPCA(device=device)
    x = ppca.sample(200, seed=2)
    exact = ppca.log_px(x)
    estimate = pyro_vae.log_likelihood(ppca.model, ppca.exact_guide, x, num_samples=50)
    assert estimate.shape == (200,) and estimate.device == x.device
    assert torch.allclose(estimate, exact, atol=1e-3, rtol=0)
    # With the exact posterior the KL term vanishes: the ELBO is log p(x) too.
    assert torch.allclose(pyro_vae.elbo(ppca.model, ppca.exact_guide, x, num_samples=3), exact, atol=1e-3, rtol=0)


def test_chunking_does_not_change_the_estimate(ppca):
    x = ppca.sample(23, seed=3)
    # 7 (particle, datum) pairs at a time: particles and rows are both split across chunks.
    chunked = pyro_vae.log_likelihood(ppca.model, ppca.exact_guide, x, num_samples=10, max_batch=7)
    assert torch.allclose(chunked, ppca.log_px(x), atol=1e-3, rtol=0)
    weights = log_weights(ppca.model, ppca.exact_guide, x, num_samples=10, max_batch=4)
    assert weights.shape == (10, 23)
    assert torch.allclose(weights, ppca.log_px(x).expand(10, 23), atol=1e-3, rtol=0)


def test_cpu_chunks_hold_at_most_the_allocators_mapping_threshold_of_data():
    mnist = torch.zeros(3, 1, 28, 28)
    particles, rows = chunk_shape(mnist, 5000)
    assert (particles, rows) == (5000, 2) and particles * rows * 784 * 4 <= CPU_CHUNK_BYTES
    assert chunk_shape(mnist, 20000) == (10699, 1)  # a datum's particles split across chunks
    assert chunk_shape(torch.zeros(3, 8), 100, max_batch=300) == (100, 3)  # small data: max_batch decides


def test_a_wrong_guide_is_visibly_wrong(ppca):
    """The exactness above is not automatic: a shifted posterior breaks it."""

    def shifted_guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            loc = (x - ppca.b) @ ppca.W @ ppca.M_inv.T + 1.0
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=SIGMA**2 * ppca.M_inv))

    x = ppca.sample(100, seed=4)
    exact = ppca.log_px(x)
    elbo = pyro_vae.elbo(ppca.model, shifted_guide, x, num_samples=20)
    assert (exact - elbo).mean() > 1.0


def test_trained_amortized_guide_orders_the_bounds(ppca):
    model = PPCA(torch.float32)
    x = model.sample(2000, seed=5).float()
    guide = AmortizedNormal.build((DATA_DIM,), LATENT_DIM, hidden=(64,))
    pyro_vae.fit(model.model, guide, x, epochs=60, batch_size=100, lr=3e-3, validation=None, progress=False)
    test = model.sample(500, seed=6).float()
    exact = model.log_px(test).mean().item()
    elbo = pyro_vae.elbo(model.model, guide, test, num_samples=10).mean().item()
    importance = pyro_vae.log_likelihood(model.model, guide, test, num_samples=1000).mean().item()
    assert elbo <= importance <= exact + 0.05
    # The guide has learned something: its ELBO is within a nat of the truth.
    assert exact - elbo < 1.0


def test_scores_ignore_minibatch_scaling(ppca):
    """Scoring a datum alone or within a batch gives the same number."""
    x = ppca.sample(8, seed=7)
    together = pyro_vae.log_likelihood(ppca.model, ppca.exact_guide, x, num_samples=5)
    alone = torch.cat(
        [pyro_vae.log_likelihood(ppca.model, ppca.exact_guide, x[i : i + 1], num_samples=5) for i in range(8)]
    )
    assert torch.allclose(together, alone, atol=1e-6)


def test_scores_ignore_training_scales(ppca):
    """A KL weight applied with poutine.scale, a 1/N scaled model or a plate with a hard-coded
    size train differently, but the model's density, and so every score, is the same."""

    def fixed_size_model(x, y=None, size=None):
        ppca.model(x, y, size=1000)

    def fixed_size_guide(x, y=None, size=None):
        ppca.exact_guide(x, y, size=1000)

    def beta_model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            with poutine.scale(scale=4.0):
                z = pyro.sample("z", dist.Normal(torch.zeros_like(ppca.b[:LATENT_DIM]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ ppca.W.T + ppca.b, SIGMA).to_event(1), obs=x)

    x = ppca.sample(6, seed=8)
    exact = ppca.log_px(x)
    pairs = {
        "hard-coded plate size": (fixed_size_model, fixed_size_guide),
        "poutine.scale 1/N": (poutine.scale(ppca.model, 1e-3), poutine.scale(ppca.exact_guide, 1e-3)),
        "beta on the latent site": (beta_model, ppca.exact_guide),
    }
    for name, (model, guide) in pairs.items():
        estimate = pyro_vae.log_likelihood(model, guide, x, num_samples=5)
        assert torch.allclose(estimate, exact, atol=1e-3), name


@pytest.mark.parametrize("guide_mean", [0.0, 0.7])
def test_global_latent_is_held_at_the_guides_mean(guide_mean):
    """A global site outside the data plate: scores are log p(x | shift = E_q[shift]), exactly."""

    def model(x, y=None, size=None):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        with pyro.plate("data", size, subsample=x):
            pyro.sample("x", dist.Normal(shift, 1.0).expand([2]).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        pyro.sample("shift", dist.Normal(guide_mean, 0.5))

    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    expected = dist.Normal(guide_mean, 1.0).log_prob(x).sum(-1)
    assert torch.allclose(pyro_vae.elbo(model, guide, x, num_samples=3), expected)
    assert torch.allclose(pyro_vae.log_likelihood(model, guide, x, num_samples=3), expected)


def test_which_observed_site_holds_the_data():
    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("obs", dist.Normal(0.0, 1.0).expand([2]).to_event(1), obs=x)

    def two_observed(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("a", dist.Normal(0.0, 1.0).expand([2]).to_event(1), obs=x)
            pyro.sample("b", dist.Normal(0.0, 2.0).expand([2]).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        pass

    x = torch.zeros(3, 2)
    expected = dist.Normal(0.0, 1.0).log_prob(x).sum(-1)  # the one observed site is the data's
    assert torch.allclose(pyro_vae.log_likelihood(model, guide, x, num_samples=2), expected)
    with pytest.raises(ValueError, match=r"observed sites: \['a', 'b'\].*Convention\(observed_site"):
        pyro_vae.elbo(two_observed, guide, x)
    named = pyro_vae.elbo(two_observed, guide, x, convention=Convention(observed_site="b"))
    both = expected + dist.Normal(0.0, 2.0).log_prob(x).sum(-1)  # a score has every per-datum site
    assert torch.allclose(named, both)
    with pytest.raises(ValueError, match="no observed sample site named 'c'"):
        pyro_vae.elbo(two_observed, guide, x, convention=Convention(observed_site="c"))


def test_latent_missing_from_guide_is_refused(ppca):
    def empty_guide(x, y=None, size=None):
        pass

    with pytest.raises(ValueError, match=r"\['z'\].*not sampled by the guide"):
        pyro_vae.elbo(ppca.model, empty_guide, ppca.sample(3, seed=0))


def test_a_program_that_subsamples_its_data_plate_is_refused_for_scores():
    """pyro.plate("data", N, subsample_size=b) scores b data of the program's choosing: per-datum
    scores of the rows given are undefined, and say so before any work."""

    def model(x):
        with pyro.plate("data", len(x), subsample_size=4) as rows:
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x[rows])

    def guide(x):
        with pyro.plate("data", len(x), subsample_size=4):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    x = torch.randn(10, 2)
    for score in (pyro_vae.elbo, pyro_vae.log_likelihood, log_weights):
        with pytest.raises(ValueError, match=r"pyro.plate\('data'\) of 4 data.*given 10.*subsample=x"):
            score(model, guide, x)


@pytest.mark.parametrize(
    "x, error, message",
    [
        (
            torch.zeros(2, DATA_DIM).index_fill(1, torch.tensor([3]), math.nan),
            ValueError,
            r"x holds 2 NaN.*rows \[0, 1\]",
        ),
        (torch.zeros(2, DATA_DIM).index_fill(1, torch.tensor([3]), math.inf), ValueError, "NaN or infinite"),
        (torch.ones(2, DATA_DIM, dtype=torch.long), TypeError, r"floating-point.*x\.float\(\)"),
    ],
)
def test_scores_check_the_data_as_fit_does(ppca, x, error, message):
    scores = (pyro_vae.elbo, pyro_vae.log_likelihood, log_weights, importance_scores)
    for score in scores:
        with pytest.raises(error, match=message):
            score(ppca.model, ppca.exact_guide, x)
    with pytest.raises(error, match=message):
        next(iter_log_weights(ppca.model, ppca.exact_guide, x))


def test_scores_name_data_of_another_dtype_than_the_networks_as_fit_does():
    """float64 data (from NumPy, say) for float32 networks fail in the first layer: the scores say
    so, with the fix, as fit does, not with torch's matrix-product error and a trace dump."""
    model, guide = VAE.build((DATA_DIM,), 2, (8,), "mlp", "gaussian"), AmortizedNormal.build((DATA_DIM,), 2, (8,))
    x = torch.zeros(3, DATA_DIM, dtype=torch.float64)
    for score in (pyro_vae.elbo, pyro_vae.log_likelihood, log_weights, importance_scores):
        with pytest.raises(TypeError, match=r"float64 but the model or guide computes in torch.float32.*x\.float\(\)"):
            score(model, guide, x)
