"""The typicality test for images, and the split log weights it is built on."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from sklearn.exceptions import NotFittedError

from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VAE
from pyro_vae.scoring import TAIL_FRACTION, TailError, log_weight_terms, log_weights
from pyro_vae.typicality import STATISTICS, TypicalityTest, image_statistics, mixture_log_density

PRIOR_SCALE, NOISE = 2.0, 0.5


def model(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), PRIOR_SCALE).to_event(1))
        pyro.sample("x", dist.Normal(z, NOISE).to_event(1), obs=x)


def guide(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        pyro.sample("z", dist.Normal(0.5 * x, 0.7).to_event(1))


def test_the_terms_add_up_to_the_log_weights_bit_for_bit():
    x = torch.randn(37, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pyro.set_rng_seed(1)
    terms = log_weight_terms(model, guide, x, num_samples=9, max_batch=50)
    pyro.set_rng_seed(1)
    weights = log_weights(model, guide, x, num_samples=9, max_batch=50)
    assert terms.observed.shape == terms.latent.shape == terms.guide.shape == (9, 37)
    assert torch.equal(terms.observed + terms.latent - terms.guide, weights)


def test_each_term_is_its_own_site():
    """A point-mass guide at z = x / 2 makes every term a known density."""

    def point_guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("z", dist.Delta(0.5 * x, log_density=torch.tensor(1.25, dtype=x.dtype)).to_event(1))

    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    terms = log_weight_terms(model, point_guide, x, num_samples=3)
    z = 0.5 * x
    assert torch.allclose(terms.observed, dist.Normal(z, NOISE).log_prob(x).sum(-1).expand(3, 5))
    assert torch.allclose(terms.latent, dist.Normal(0.0, PRIOR_SCALE).log_prob(z).sum(-1).expand(3, 5))
    assert torch.equal(terms.guide, torch.full((3, 5), 2 * 1.25, dtype=x.dtype))  # 1.25 for each of 2 dims


def test_the_tail_sums_the_worst_fitting_values():
    """With a point-mass guide the tail is the sum of the lowest per-value densities, known exactly."""

    def wide_model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(8, dtype=x.dtype), PRIOR_SCALE).to_event(1))
            pyro.sample("x", dist.Normal(z, NOISE).to_event(1), obs=x)

    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert log_weight_terms(wide_model, point_guide, x).observed_tail is None, "no tail unless asked"
    per_value = dist.Normal(0.5 * x, NOISE).log_prob(x)
    lowest_two = per_value.sort(-1).values[:, :2].sum(-1)
    for fraction, expected in ((0.25, lowest_two), (0.01, per_value.min(-1).values), (1.0, per_value.sum(-1))):
        terms = log_weight_terms(wide_model, point_guide, x, num_samples=3, tail_fraction=fraction)
        assert terms.observed_tail.shape == (3, 6)
        assert torch.allclose(terms.tail, expected), fraction
    x[2, 5] = 50.0  # one badly fitting value: the tail is that value
    assert log_weight_terms(wide_model, point_guide, x, tail_fraction=0.125).tail[2] < -1000


def point_guide(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        pyro.sample("z", dist.Delta(0.5 * x, event_dim=1))


@pytest.mark.parametrize("how", ["poutine.mask", "Distribution.mask"])
def test_data_a_mask_hides_have_no_tail(how):
    def masked_model(x, y=None, size=None):
        keep = torch.arange(len(x)) % 2 == 0
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), PRIOR_SCALE).to_event(1))
            observation = dist.Normal(z, NOISE).to_event(1)
            if how == "Distribution.mask":
                pyro.sample("x", observation.mask(keep), obs=x)
            else:
                with pyro.poutine.mask(mask=keep):
                    pyro.sample("x", observation, obs=x)

    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    terms = log_weight_terms(masked_model, guide, x, num_samples=4, tail_fraction=1.0)
    assert torch.equal(terms.tail[1::2], torch.zeros(3, dtype=x.dtype)) and (terms.tail[::2] != 0).all()
    assert torch.allclose(terms.observed_tail, terms.observed)


def test_hidden_values_are_never_the_worst_ones():
    """Sharp densities are above 1 (log-density > 0): a hidden value counted as 0 would be the
    lowest of all. Values hidden inside a datum are left out of the tail instead."""
    shown = torch.tensor([True, False, True, False, True, False, True, False])

    def sharp_model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(8, dtype=x.dtype), PRIOR_SCALE).to_event(1))
            pyro.sample("x", dist.Normal(2 * z, 0.01).mask(shown).to_event(1), obs=x)

    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    value = dist.Normal(torch.tensor(0.0, dtype=x.dtype), 0.01).log_prob(torch.tensor(0.0, dtype=x.dtype))
    assert value > 0
    one = log_weight_terms(sharp_model, point_guide, x, tail_fraction=0.125).tail  # one value of 8
    assert torch.allclose(one, value.expand(3))
    every = log_weight_terms(sharp_model, point_guide, x, tail_fraction=1.0).tail  # the 4 shown, the rest 0
    assert torch.allclose(every, 4 * value.expand(3))


def test_the_tail_is_the_observed_data_alone_and_univariate_transforms_keep_their_jacobian():
    def labelled_model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), PRIOR_SCALE).to_event(1))
            pyro.sample("y", dist.Categorical(logits=torch.zeros(3, dtype=x.dtype)), obs=y)
            pyro.sample("x", dist.LogNormal(z, NOISE).to_event(1), obs=x)

    x = torch.rand(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    y = torch.tensor([0, 1, 2, 1, 0])
    terms = log_weight_terms(labelled_model, point_guide, x, y, tail_fraction=1.0)
    label = math.log(1 / 3)
    assert torch.allclose(terms.observed - label, dist.LogNormal(0.5 * x, NOISE).log_prob(x).sum(-1).expand(1, 5))
    assert torch.allclose(terms.observed_tail, terms.observed - label), "the label is not one of the data's values"


def test_a_tail_needs_independent_values():
    def joint_model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), PRIOR_SCALE).to_event(1))
            pyro.sample("x", dist.MultivariateNormal(z, NOISE**2 * torch.eye(2, dtype=x.dtype)), obs=x)

    def transformed_model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), PRIOR_SCALE).to_event(1))
            joint = dist.TransformedDistribution(dist.Normal(z, NOISE).to_event(1), [dist.transforms.ExpTransform()])
            pyro.sample("x", joint, obs=x)

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(TailError, match=r"observed site 'x' has a MultivariateNormal.*independent values"):
        log_weight_terms(joint_model, guide, x, tail_fraction=TAIL_FRACTION)
    with pytest.raises(TailError, match="TransformedDistribution over values shaped"):
        log_weight_terms(transformed_model, guide, x.exp(), tail_fraction=TAIL_FRACTION)
    assert log_weight_terms(joint_model, guide, x).rate.shape == (4,), "without a tail, any observed site"
    with pytest.raises(ValueError, match="no tail: pass log_weight_terms a tail_fraction"):
        _ = log_weight_terms(joint_model, guide, x).tail
    with pytest.raises(ValueError, match="tail_fraction must be in"):
        log_weight_terms(model, guide, x, tail_fraction=0.0)


def test_the_rate_is_the_kl_divergence_of_guide_and_prior():
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pyro.set_rng_seed(0)
    rate = log_weight_terms(model, guide, x, num_samples=20000).rate
    prior = dist.Normal(torch.zeros(2, dtype=x.dtype), PRIOR_SCALE).to_event(1)
    exact = torch.distributions.kl_divergence(dist.Normal(0.5 * x, 0.7).to_event(1), prior)
    assert torch.allclose(rate, exact, atol=0.05), (rate, exact)


@pytest.fixture(scope="module")
def fitted(digits):
    pyro.set_rng_seed(0)
    vae = VAE.build(digits.x_shape, 4, [32], "mlp", "continuous-bernoulli")
    encoder = AmortizedNormal.build(digits.x_shape, 4, [32], "mlp")
    return vae, encoder, TypicalityTest(vae, encoder, num_samples=8).fit(digits.train_x[:300])


def test_statistics_are_log_likelihood_rate_complexity_and_tail(fitted, digits):
    vae, encoder, _ = fitted
    x = digits.test_x[:20]
    statistics = image_statistics(vae, encoder, x, num_samples=8)
    assert statistics.shape == (20, len(STATISTICS)) and np.isfinite(statistics).all()
    assert (statistics[:, 1] > 0).all(), "a KL divergence estimate of a Normal guide against a Normal prior"
    assert (statistics[:, 2] > 0).all(), "a PNG length"
    terms = log_weight_terms(vae, encoder, x, num_samples=8, common_noise=0, tail_fraction=TAIL_FRACTION)
    assert np.array_equal(statistics[:, 3], terms.tail.double().numpy())
    pixels = x[0].numel()
    worst = math.ceil(TAIL_FRACTION * pixels)  # the lowest values, so their mean is at most the mean of all
    assert (statistics[:, 3] <= terms.observed.mean(0).double().numpy() * worst / pixels + 1e-9).all()


def test_scores_are_two_sided(fitted, digits):
    """An image whose log p(x) is far *above* the held-out ones is as atypical as one far below."""
    _, _, test = fitted
    statistics = test.statistics(digits.test_x[:50])
    scores = test.score_statistics(statistics)
    for shift in (-6.0, 6.0):
        for column in range(len(STATISTICS)):
            moved = statistics.copy()
            moved[:, column] += shift * test.scale_[column]
            assert (test.score_statistics(moved) < scores).all(), (column, shift)
    far = statistics.copy()
    far[:, 0] -= 1e6 * test.scale_[0]
    assert np.isfinite(test.score_statistics(far)).all(), "every finite input gets a finite score"


def test_the_mixture_density_is_scikit_learns(fitted):
    _, _, test = fitted
    points = np.random.default_rng(0).normal(size=(40, len(STATISTICS))) * 3
    assert np.allclose(mixture_log_density(test.mixture_, points), test.mixture_.score_samples(points))


def test_a_score_does_not_depend_on_the_other_images(fitted, digits):
    _, _, test = fitted
    x = digits.test_x[:30]
    together = test.score(x)
    assert np.array_equal(test.score(x[7:8]), together[7:8])
    assert np.array_equal(test.score(x.flip(0)), together[::-1])


def test_held_out_scores_set_the_reference_and_noise_scores_far_below(fitted, digits):
    _, _, test = fitted
    assert test.reference_.shape == (300,)
    noise = torch.rand(50, *digits.x_shape, generator=torch.Generator().manual_seed(0))
    assert np.median(test.score(noise)) < np.quantile(test.reference_, 0.01)


def test_bad_calls_are_named(fitted, digits):
    vae, encoder, _ = fitted
    with pytest.raises(NotFittedError, match="call fit"):
        TypicalityTest(vae, encoder).score(digits.test_x[:5])
    with pytest.raises(ValueError, match="at least 10 held-out images"):
        TypicalityTest(vae, encoder).fit(digits.train_x[:5])
    with pytest.raises(ValueError, match="images shaped"):
        image_statistics(model, guide, torch.zeros(4, 2))


def test_the_mixture_is_chosen_without_touching_the_global_generators(fitted, digits):
    vae, encoder, _ = fitted
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    TypicalityTest(vae, encoder, num_samples=4, max_components=3).fit(digits.train_x[:100])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
