"""Likelihood families: event shapes, parameter counts, floors and support checks."""

from __future__ import annotations

import pytest
import torch

from pyro_vae.likelihoods import LIKELIHOODS, get_likelihood


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_event_shape_and_log_prob(name):
    likelihood = get_likelihood(name, event_dim=3)
    params = torch.randn(2, 5, likelihood.params_per_value, 1, 4, 4)
    distribution = likelihood(params)
    assert distribution.batch_shape == (2, 5)
    assert distribution.event_shape == (1, 4, 4)
    x = (torch.rand(5, 1, 4, 4) > 0.5).float()
    log_prob = distribution.log_prob(x)
    assert log_prob.shape == (2, 5) and torch.isfinite(log_prob).all()
    assert likelihood.mean(params).shape == (2, 5, 1, 4, 4)


def test_gaussian_scale_is_the_knob_c():
    loc = torch.zeros(1, 1, 3)
    x = torch.full((1, 3), 0.5)
    wide, narrow = get_likelihood("gaussian", 1, scale=1.0), get_likelihood("gaussian", 1, scale=0.1)
    assert wide(loc).base_dist.scale.unique().item() == 1.0
    # A residual of 0.5 costs 0.125 nats per value at c = 1 and 12.5 at c = 0.1 (before normalizers).
    difference = wide(loc).log_prob(x) - narrow(loc).log_prob(x)
    expected = 3 * ((-0.125 - torch.log(torch.tensor(1.0))) - (-12.5 - torch.log(torch.tensor(0.1))))
    assert difference.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="positive scale"):
        get_likelihood("gaussian", 1, scale=0.0)


@pytest.mark.parametrize("name", ["gaussian-learned", "student-t"])
def test_learned_scales_have_a_floor(name):
    likelihood = get_likelihood(name, 1, min_scale=0.01)
    params = torch.full((1, 2, 3), -1e4)
    assert likelihood(params).base_dist.scale.min() >= 0.01


def test_support_checks_name_the_problem():
    with pytest.raises(ValueError, match="binary"):
        get_likelihood("bernoulli", 1).check_support(torch.tensor([[0.0, 0.5]]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        get_likelihood("continuous-bernoulli", 1).check_support(torch.tensor([[0.0, 1.5]]))
    with pytest.raises(ValueError, match="NaN"):
        get_likelihood("gaussian", 1).check_support(torch.tensor([[0.0, float("nan")]]))
    get_likelihood("continuous-bernoulli", 1).check_support(torch.tensor([[0.0, 0.3, 1.0]]))
    with pytest.raises(ValueError, match="unknown likelihood"):
        get_likelihood("poisson", 1)
