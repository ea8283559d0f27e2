"""The cheaper Normals of the stock prior and guides: same draws, densities and gradients as
torch's Normal."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.distributions import ReparameterizedNormal, StandardNormal


def test_standard_normal_density_and_gradient_equal_the_general_normal():
    prior = StandardNormal(torch.zeros(6))
    value = (3 * torch.randn(4, 6, generator=torch.Generator().manual_seed(0))).requires_grad_()
    ours, reference = prior.log_prob(value), dist.Normal(torch.zeros(6), 1.0).log_prob(value)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(*(torch.autograd.grad(t.sum(), value)[0] for t in (ours, reference)))


def test_standard_normal_keeps_batch_shapes():
    prior = StandardNormal(torch.zeros(3)).expand((5, 3))
    assert isinstance(prior, StandardNormal) and prior.batch_shape == (5, 3)
    assert prior.log_prob(torch.zeros(3)).shape == (5, 3)  # a value broadcast against the batch
    assert prior.to_event(1).log_prob(torch.zeros(2, 5, 3)).shape == (2, 5)
    assert prior.sample((7,)).shape == (7, 5, 3)
    with pytest.raises(ValueError):
        StandardNormal(torch.zeros(3), validate_args=True).log_prob(torch.tensor([0.0, float("nan"), 1.0]))


def test_reparameterized_normal_draws_like_torch():
    loc, scale = torch.randn(4, 3), torch.rand(4, 3) + 0.1
    torch.manual_seed(5)
    ours = ReparameterizedNormal(loc, scale).rsample((2,))
    torch.manual_seed(5)
    torch.testing.assert_close(ours, dist.Normal(loc, scale).rsample((2,)), rtol=0, atol=0)


def test_density_of_its_own_draw_has_the_general_value_and_gradient():
    """log q(z) of the draw, differentiated through the draw as the ELBO does: the same as torch's
    general formula (whose terms through z cancel: zero for loc), for loc and for scale."""
    generator = torch.Generator().manual_seed(1)
    loc = torch.randn(64, 5, generator=generator).requires_grad_()
    raw_scale = torch.randn(64, 5, generator=generator).requires_grad_()
    results = []
    for family in (ReparameterizedNormal, dist.Normal):
        torch.manual_seed(2)
        posterior = family(loc, torch.nn.functional.softplus(raw_scale)).to_event(1)
        z = posterior.rsample()
        log_q = posterior.log_prob(z)
        weighted = (log_q * torch.arange(64.0)).sum()
        results.append((log_q, *torch.autograd.grad(weighted, (loc, raw_scale), materialize_grads=True)))
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert results[0][2].abs().max() > 0.1  # the scale's gradient is not trivially zero


def test_other_values_get_the_general_formula():
    posterior = ReparameterizedNormal(torch.zeros(3), torch.full((3,), 2.0))
    drawn = posterior.rsample()
    other = drawn.clone()  # equal values, another tensor: the general formula, same numbers
    torch.testing.assert_close(posterior.log_prob(other), dist.Normal(0.0, 2.0).log_prob(other))
    value = torch.tensor([0.5, -1.0, 4.0])
    torch.testing.assert_close(posterior.log_prob(value), dist.Normal(0.0, 2.0).log_prob(value))
    expanded = posterior.expand((2, 3))
    assert isinstance(expanded, ReparameterizedNormal)
    torch.testing.assert_close(expanded.log_prob(value), dist.Normal(0.0, 2.0).log_prob(value).expand(2, 3))
