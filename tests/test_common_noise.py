"""Common noise: a datum's score depends on the datum and the seed, not on the rest of the call."""

from __future__ import annotations

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_scoring import PPCA

from pyro_vae.common_noise import CommonNoiseError
from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VAE
from pyro_vae.scoring import elbo, log_likelihood, log_weights


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = VAE.build((6,), 2, (16,), "mlp", "gaussian")
    return model, AmortizedNormal.build((6,), 2, (16,), "mlp")


def rows(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("score", [log_likelihood, elbo])
def test_a_datum_scores_the_same_alone_in_a_batch_and_in_any_order(pair, score):
    x = rows(300, seed=1)
    full = score(*pair, x, num_samples=16, common_noise=3)
    order = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    assert torch.equal(score(*pair, x[order], num_samples=16, common_noise=3), full[order])
    alone = torch.cat([score(*pair, x[i : i + 1], num_samples=16, common_noise=3) for i in (0, 5, 299)])
    assert torch.equal(alone, full[[0, 5, 299]])
    chunked = score(*pair, x, num_samples=16, max_batch=16 * 7, common_noise=3)  # row blocks of 7
    assert torch.equal(chunked, full)


def test_without_common_noise_a_datum_depends_on_the_call(pair):
    """The property above is not automatic: fresh draws per datum give another number alone."""
    x = rows(50, seed=1)
    full = log_likelihood(*pair, x, num_samples=16)
    assert not torch.equal(log_likelihood(*pair, x[:1], num_samples=16), full[:1])


def test_every_datum_sees_the_same_draws_and_another_seed_other_draws(pair):
    x = rows(1, seed=4).expand(5, 6)
    log_w = log_weights(*pair, x, num_samples=8, common_noise=0)
    assert torch.equal(log_w, log_w[:, :1].expand(8, 5))  # five copies of one datum: one set of weights
    assert not torch.equal(log_weights(*pair, x, num_samples=8, common_noise=1), log_w)
    assert log_w[:, 0].unique().numel() == 8  # but K distinct particles


@pytest.mark.gpu
def test_the_gpu_draws_what_the_cpu_draws(pair):
    """The noise comes from a CPU generator and is moved to the site's device."""
    x = rows(20, 5)
    on_cpu = log_likelihood(*pair, x, num_samples=50, common_noise=3)
    model, guide = (copy.deepcopy(program).cuda() for program in pair)
    on_gpu = log_likelihood(model, guide, x.cuda(), num_samples=50, common_noise=3)
    assert on_gpu.is_cuda and torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=0)
    assert not torch.allclose(log_likelihood(model, guide, x.cuda(), num_samples=50, common_noise=4).cpu(), on_cpu)


def test_the_estimate_is_still_the_importance_sampled_log_likelihood():
    """With the exact posterior as proposal every weight is p(x): common or not, exact."""
    ppca = PPCA()
    x = ppca.sample(40, seed=5)
    estimate = log_likelihood(ppca.model, ppca.exact_guide, x, num_samples=4, common_noise=0)
    assert torch.allclose(estimate, ppca.log_px(x), atol=1e-9)


def test_the_callers_random_state_is_left_alone(pair):
    torch.manual_seed(8)
    expected = torch.rand(3)
    torch.manual_seed(8)
    log_likelihood(*pair, rows(20, seed=6), num_samples=4, common_noise=0)
    assert torch.equal(torch.rand(3), expected)


def test_a_guide_distribution_it_cannot_draw_is_named():
    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Poisson(rate), obs=x)

    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("rate", dist.Gamma(x + 1.0, 1.0))

    x = torch.tensor([0.0, 3.0, 1.0])
    assert log_likelihood(model, guide, x, num_samples=4).isfinite().all()
    with pytest.raises(CommonNoiseError, match="Gamma"):
        log_likelihood(model, guide, x, num_samples=4, common_noise=0)


def test_flow_guides_are_drawn_through_their_transforms():
    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, scale), obs=x)

    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("scale", dist.LogNormal(x.abs().log1p(), 0.5))

    x = torch.linspace(0.5, 2.5, 30, dtype=torch.float64)
    full = log_likelihood(model, guide, x, num_samples=2000, common_noise=0)
    assert torch.equal(log_likelihood(model, guide, x[7:8], num_samples=2000, common_noise=0), full[7:8])
    u = torch.linspace(-8, 8, 20001, dtype=torch.float64)  # log scale, by quadrature
    joint = dist.Normal(0.0, u.exp()).log_prob(x[:, None]) + dist.Normal(0.0, 1.0).log_prob(u)
    exact = torch.logsumexp(joint, 1) + math.log(float(u[1] - u[0]))
    reference = log_likelihood(model, guide, x, num_samples=2000)
    assert (reference - exact).abs().max() < 0.15  # Monte Carlo error of this guide at K = 2000
    assert (full - exact).abs().max() < 0.15  # the same quantity, up to the same error
    assert not torch.equal(full, reference)


def test_point_mass_guides_need_no_noise():
    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("z", dist.Delta(x / 2))

    x = torch.linspace(-1, 1, 7)
    common = log_likelihood(model, guide, x, num_samples=3, common_noise=1)
    assert torch.equal(common, log_likelihood(model, guide, x, num_samples=3))  # a Delta draws no noise


def test_a_plate_inside_the_data_plate_takes_common_noise():
    """An inner plate's own (subsample) site draws indices, not noise: common noise leaves it be."""

    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x, dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, 2), 1.0).to_event(1))
            with pyro.plate("features", x.shape[-1], dim=-1):
                pyro.sample("x", dist.Normal(z[..., 0], 0.5), obs=x)

    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x, dim=-2):
            pyro.sample("z", dist.Normal(x[..., None, :2], 0.7).to_event(1))

    x = rows(20, seed=4)[:, :3]
    together = log_likelihood(model, guide, x, num_samples=8, common_noise=1)
    assert torch.isfinite(together).all()
    assert torch.equal(log_likelihood(model, guide, x[5:6], num_samples=8, common_noise=1), together[5:6])
