"""Conditional VAE, semi-supervised M2 training and class-conditional scores, on the small digits."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

import pyro_vae
from pyro_vae.conditional import class_scores, given_labels, label_log_prior
from pyro_vae.data import MISSING_LABEL, hide_labels
from pyro_vae.guides import ConditionalNormal
from pyro_vae.models import ConditionalVAE

CLASSES, LATENT, HIDDEN = 10, 8, (256,)


def conditional_pair(x_shape=(1, 8, 8)):
    model = ConditionalVAE.build(x_shape, CLASSES, LATENT, HIDDEN, "mlp", "continuous-bernoulli")
    guide = ConditionalNormal.build(x_shape, CLASSES, LATENT, HIDDEN, "mlp")
    return model, guide


@pytest.fixture(scope="module")
def supervised(digits):
    pyro.set_rng_seed(0)
    model, guide = conditional_pair()
    pyro_vae.fit(model, guide, (digits.train_x, digits.train_y), epochs=30, progress=False)
    return model, guide


def test_enumerated_elbo_equals_the_hand_summed_one():
    """A tiny mixture y ~ Cat(π), x ~ N(μ_y, 1) with q(y | x) enumerated in parallel: the ELBO is
    Σ_y q(y | x) [log π_y + log N(x; μ_y, 1) - log q(y | x)] exactly, with no sampling noise."""
    pi, mu = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([-2.0, 0.0, 3.0])
    weights = torch.tensor([0.7, -0.3, 1.1])

    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            label = pyro.sample("y", dist.Categorical(pi))
            pyro.sample("x", dist.Normal(mu[label], 1.0), obs=x)

    def guide_logits(x):
        return x.unsqueeze(-1) * weights

    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("y", dist.Categorical(logits=guide_logits(x)), infer={"enumerate": "parallel"})

    x = torch.tensor([-1.5, 0.2, 2.5, 4.0])
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x, size=4)
    log_q = guide_logits(x).log_softmax(-1)
    log_joint = pi.log() + dist.Normal(mu, 1.0).log_prob(x.unsqueeze(-1))
    by_hand = (log_q.exp() * (log_joint - log_q)).sum()
    assert loss == pytest.approx(-by_hand.item(), rel=1e-6)


def test_hide_labels_keeps_the_requested_number_per_class(digits):
    hidden = hide_labels(digits.train_y, per_class=5, seed=3)
    kept = hidden[hidden != MISSING_LABEL]
    assert torch.equal(torch.bincount(kept), torch.full((10,), 5))
    assert torch.equal(hidden[hidden != MISSING_LABEL], digits.train_y[hidden != MISSING_LABEL])


def test_label_is_observed_latent_or_masked():
    model, guide = conditional_pair()
    x = torch.rand(4, 1, 8, 8)
    full = pyro.poutine.trace(model).get_trace(x, torch.tensor([1, 2, 3, 4]))
    assert full.nodes["y"]["is_observed"]
    partial = pyro.poutine.trace(guide).get_trace(x, torch.tensor([1, MISSING_LABEL, 3, MISSING_LABEL]))
    assert "y_unobserved" in partial.nodes and "y" not in partial.nodes
    unlabelled = pyro.poutine.trace(guide).get_trace(x)
    assert unlabelled.nodes["y"]["infer"]["enumerate"] == "parallel"
    drawn = model(None, torch.tensor([7, 7, 2]))
    assert drawn.shape == (3, 1, 8, 8)


def test_given_labels_subtracts_exactly_the_label_prior(supervised, digits):
    model, guide = supervised
    x, y = digits.test_x[:30], digits.test_y[:30]
    pyro.set_rng_seed(4)
    joint = pyro_vae.log_likelihood(model, guide, x, y, num_samples=5)
    pyro.set_rng_seed(4)
    conditional = pyro_vae.log_likelihood(given_labels(model), guide, x, y, num_samples=5)
    prior = label_log_prior(model, x, CLASSES)
    assert torch.allclose(prior, torch.full((CLASSES,), -torch.log(torch.tensor(10.0))))
    assert torch.allclose(joint - conditional, prior[y], atol=1e-4)


def test_generative_classifier_and_label_summed_likelihood(supervised, digits):
    model, guide = supervised
    scores = class_scores(model, guide, digits.test_x, CLASSES, num_samples=20)
    accuracy = (scores.predict() == digits.test_y).float().mean().item()
    assert accuracy > 0.8  # about 0.90 after 30 epochs; chance is 0.1
    assert torch.allclose(scores.posterior.sum(-1), torch.ones(len(digits.test_x)), atol=1e-5)
    # The same log p(x), estimated instead by sampling y from q(y | x) (untrained here: the
    # supervised guide's classifier is never used), agrees within Monte Carlo error.
    sampled = pyro_vae.log_likelihood(model, guide, digits.test_x, num_samples=200)
    assert abs(sampled.mean() - scores.log_px.mean()) < 1.0
    # Novelty against a claimed label: the true label is far more plausible than a wrong one.
    log_px_true, posterior_true = scores.claimed(digits.test_y)
    log_px_wrong, posterior_wrong = scores.claimed((digits.test_y + 1) % CLASSES)
    assert (log_px_true > log_px_wrong).float().mean() > 0.8
    assert posterior_true.mean() > 0.8 > 0.2 > posterior_wrong.mean()


def test_samples_of_a_class_are_recognised_as_that_class(supervised):
    model, guide = supervised
    pyro.set_rng_seed(1)
    labels = torch.arange(CLASSES).repeat_interleave(20)
    with torch.no_grad():
        images = model.decode(model.prior().sample((len(labels),)), labels)
    recognised = (class_scores(model, guide, images, CLASSES, num_samples=20).predict() == labels).float().mean()
    assert recognised > 0.5  # about 0.75 after 30 epochs on the 8x8 digits; chance is 0.1


def test_decoder_that_ignores_the_label_fails_the_classifier_bar(digits):
    """The accuracy bar above is out of reach of a model whose decoder ignores y."""
    pyro.set_rng_seed(0)
    model, guide = conditional_pair()
    model.labels.forward = lambda y: torch.zeros(*y.shape, CLASSES)
    pyro_vae.fit(model, guide, (digits.train_x, digits.train_y), epochs=10, progress=False)
    scores = class_scores(model, guide, digits.test_x, CLASSES, num_samples=5)
    assert (scores.predict() == digits.test_y).float().mean() < 0.3


def test_semi_supervised_m2_learns_a_classifier_from_ten_labels_per_class(digits):
    pyro.set_rng_seed(0)
    model, guide = conditional_pair()
    model.classifier, model.alpha = guide.classifier, 50.0
    labels = hide_labels(digits.train_y, per_class=10)
    history = pyro_vae.fit(model, guide, (digits.train_x, labels), epochs=20, loss="enum", progress=False)
    assert history.val_elbo[-1] > 50.0
    with torch.no_grad():
        accuracy = (guide.label_posterior(digits.test_x).probs.argmax(-1) == digits.test_y).float().mean()
    assert accuracy > 0.8  # about 0.87 after 20 epochs; chance is 0.1
    # The auxiliary classification term trains but never enters a score.
    pyro.set_rng_seed(2)
    with_alpha = pyro_vae.elbo(model, guide, digits.test_x[:20], digits.test_y[:20])
    model.alpha = 0.0
    pyro.set_rng_seed(2)
    assert torch.equal(with_alpha, pyro_vae.elbo(model, guide, digits.test_x[:20], digits.test_y[:20]))


def test_learned_label_embedding_trains(digits):
    pyro.set_rng_seed(0)
    model = ConditionalVAE.build((1, 8, 8), CLASSES, LATENT, HIDDEN, "conv", "continuous-bernoulli", embedding_dim=3)
    guide = ConditionalNormal.build((1, 8, 8), CLASSES, LATENT, (16, 32), "conv", embedding_dim=3)
    assert model.labels.dim == 3 and model.labels(torch.tensor([[1], [2]])).shape == (2, 1, 3)
    embedding_before = model.labels.embedding.weight.detach().clone()
    history = pyro_vae.fit(model, guide, (digits.train_x[:512], digits.train_y[:512]), epochs=3, progress=False)
    assert history.val_elbo[-1] > history.val_elbo[0]
    assert not torch.equal(embedding_before, model.labels.embedding.weight)
