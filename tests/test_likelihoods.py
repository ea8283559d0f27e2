"""Likelihood families: event shapes, parameter counts, floors and support checks."""

from __future__ import annotations

import pyro
import pytest
import torch

import pyro_vae
from pyro_vae.guides import AmortizedNormal
from pyro_vae.likelihoods import LIKELIHOODS, get_likelihood
from pyro_vae.models import VAE


@pytest.mark.parametrize("name", sorted(set(LIKELIHOODS) - {"mixed"}))
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


def test_mixed_columns_are_bernoulli_where_binary_and_student_t_elsewhere():
    likelihood = get_likelihood("mixed", 1, binary=[True, False, False], df=4.0)
    params = torch.randn(2, 5, 2, 3)
    distribution = likelihood(params)
    assert distribution.batch_shape == (2, 5) and distribution.event_shape == (3,)
    x = torch.tensor([1.0, 0.3, -2.0]).expand(5, 3)
    loc, raw_scale = params.unbind(-2)
    scale = torch.nn.functional.softplus(raw_scale) + 1e-3
    expected = torch.distributions.Bernoulli(logits=loc[..., 0]).log_prob(x[..., 0]) + torch.distributions.StudentT(
        4.0, loc[..., 1:], scale[..., 1:]
    ).log_prob(x[..., 1:]).sum(-1)
    assert torch.allclose(distribution.log_prob(x), expected, atol=1e-5)
    assert distribution.expand((3, 2, 5)).log_prob(x).shape == (3, 2, 5)
    with pytest.raises(ValueError, match=r"binary columns must lie in \[0, 1\]"):
        likelihood.check_support(torch.tensor([[2.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="for tables"):
        get_likelihood("mixed", 3)


@pytest.mark.parametrize("binary", [[False] * 3, [True] * 3])
def test_a_table_of_one_kind_of_column_scores_as_that_kind_alone(binary):
    likelihood = get_likelihood("mixed", 1, binary=binary, df=4.0)
    params = torch.randn(4, 2, 3)
    loc, raw_scale = params.unbind(-2)
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    if binary[0]:
        expected = torch.distributions.Bernoulli(logits=loc).log_prob(x).sum(-1)
    else:
        scale = torch.nn.functional.softplus(raw_scale) + 1e-3
        expected = torch.distributions.StudentT(4.0, loc, scale).log_prob(x).sum(-1)
    assert torch.allclose(likelihood(params).log_prob(x), expected, atol=1e-5)


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


def test_smaller_gaussian_scale_buys_sharper_reconstructions(digits):
    """c weighs the reconstruction term against the KL term: a small c gives reconstructions
    closer to the data, a large one lets the posterior collapse towards the prior."""
    errors = {}
    for scale in (0.05, 1.0):
        pyro.set_rng_seed(0)
        model = VAE.build((1, 8, 8), 8, (128,), "mlp", "gaussian", scale=scale)
        guide = AmortizedNormal.build((1, 8, 8), 8, (128,))
        pyro_vae.fit(model, guide, digits.train_x, epochs=15, validation=None, progress=False)
        with torch.no_grad():
            reconstruction = model.decode(guide.posterior(digits.test_x).mean)
        errors[scale] = (reconstruction - digits.test_x).pow(2).mean().item()
    assert errors[0.05] < 0.5 * errors[1.0]


@pytest.mark.parametrize("slow_log1p", [True, False], ids=["sigmoid-formula", "fused-bce"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bernoulli_logits_matches_torch_bernoulli_in_value_and_gradient(dtype, slow_log1p, monkeypatch):
    """Both formulas (the one without log1p for AVX-512 CPUs, torch's fused BCE elsewhere) equal
    torch's log-density from logit -100 to 100, for 0, 1 and grey values (where it is binary
    cross-entropy, as torch's), with broadcasting, and its gradient too; they stay finite where
    sigmoid underflows."""
    import pyro.distributions as dist

    from pyro_vae import distributions
    from pyro_vae.distributions import BernoulliLogits

    monkeypatch.setattr(distributions, "SLOW_CPU_LOG1P", slow_log1p)

    logits = torch.linspace(-100, 100, 2001, dtype=dtype).repeat(3, 1).requires_grad_()
    value = torch.tensor([0.0, 1.0, 0.3], dtype=dtype)[:, None]  # broadcast over the logits
    ours = BernoulliLogits(logits, validate_args=False).log_prob(value)
    reference = -torch.nn.functional.binary_cross_entropy_with_logits(logits, value.expand_as(logits), reduction="none")
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, reference, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(ours[:2], dist.Bernoulli(logits=logits[:2]).log_prob(value[:2]))
    (grad,) = torch.autograd.grad(ours.sum(), logits)
    (expected,) = torch.autograd.grad(reference.sum(), logits)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, expected, rtol=tolerance, atol=tolerance)


def test_bernoulli_logits_checks_support_also_when_expanded():
    from pyro_vae.distributions import BernoulliLogits

    grey = torch.tensor([0.0, 0.5, 1.0])
    with pytest.raises(ValueError):
        BernoulliLogits(torch.zeros(3), validate_args=True).log_prob(grey)
    expanded = BernoulliLogits(torch.zeros(3), validate_args=True).expand((2, 3))
    assert isinstance(expanded, BernoulliLogits)
    with pytest.raises(ValueError):
        expanded.log_prob(grey)


@pytest.fixture
def compiled_for_small_inputs(monkeypatch):
    """The compiled summed density, used from 4096 values on, with its own compile state."""
    from pyro_vae import distributions

    compiled = distributions._CompiledOnce(distributions._summed_log_density, 4096)
    monkeypatch.setattr(distributions, "_summed_density", compiled)
    return compiled


def test_compiled_summed_bernoulli_density_equals_the_eager_one(compiled_for_small_inputs):
    """Without gradients and for large inputs, the summed density of ``to_event`` runs compiled;
    it equals the eager sum for binary and grey values, broadcast over particles."""
    from pyro_vae.distributions import BernoulliLogits, IndependentBernoulliLogits

    generator = torch.Generator().manual_seed(0)
    logits = 8 * torch.randn(7, 5, 1, 28, 28, generator=generator)  # [particles, data, *pixels]
    binary = (torch.rand(5, 1, 28, 28, generator=generator) > 0.5).float()
    grey = torch.rand(5, 1, 28, 28, generator=generator)
    distribution = BernoulliLogits(logits).to_event(3)
    assert isinstance(distribution, IndependentBernoulliLogits)
    for value in (binary, grey):
        eager = BernoulliLogits(logits, validate_args=False).log_prob(value).sum((-3, -2, -1))
        with torch.no_grad():
            fused = distribution.log_prob(value)
        assert compiled_for_small_inputs.compiled is not None and not compiled_for_small_inputs.failed
        assert fused.shape == (7, 5)
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-3)
    # with gradients, the eager path: differentiable, same value
    logits.requires_grad_()
    summed = BernoulliLogits(logits).to_event(3).log_prob(binary)
    (gradient,) = torch.autograd.grad(summed.sum(), logits)
    torch.testing.assert_close(gradient, binary - torch.sigmoid(logits))


def test_a_failing_compiler_falls_back_to_the_eager_density(compiled_for_small_inputs):
    from pyro_vae.distributions import BernoulliLogits

    def broken_compiler(*args):
        raise RuntimeError("no C++ compiler")

    compiled_for_small_inputs.compiled = broken_compiler
    logits, value = torch.randn(4, 32, 32), (torch.rand(4, 32, 32) > 0.5).float()
    expected = BernoulliLogits(logits).log_prob(value).sum((-2, -1))
    with torch.no_grad(), pytest.warns(UserWarning, match="no C\\+\\+ compiler"):
        result = BernoulliLogits(logits).to_event(2).log_prob(value)
    torch.testing.assert_close(result, expected)
    assert compiled_for_small_inputs.failed
    # a genuine error in the arguments is still raised, not hidden by the fallback
    fresh = type(compiled_for_small_inputs)(compiled_for_small_inputs.function, 1)
    fresh.compiled = broken_compiler
    with torch.no_grad(), pytest.raises(RuntimeError, match="size"):
        fresh(logits, value[:, :3], (-2, -1))
