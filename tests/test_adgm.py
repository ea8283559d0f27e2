"""The auxiliary deep generative model: sites, the auxiliary latent's place in model and guide,
semi-supervised training with enumerated labels, and the classifiers it gives."""

import pyro
import pytest
import torch
from pyro import poutine

import pyro_vae
from pyro_vae.conditional import class_scores
from pyro_vae.data import MISSING_LABEL, hide_labels
from pyro_vae.guides import AuxiliaryNormal
from pyro_vae.models import AuxiliaryDGM

SHAPE, CLASSES = (1, 8, 8), 3


def pair(alpha: float = 10.0):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = AuxiliaryDGM.build(SHAPE, CLASSES, 4, (32,), auxiliary_dim=5)
    guide = AuxiliaryNormal.build(SHAPE, CLASSES, 4, (32,), auxiliary_dim=5)
    model.classifier, model.alpha = guide.classifier, alpha
    return model, guide


@pytest.fixture(scope="module")
def digits():
    """Three binary prototypes with 10 % of the pixels flipped, and their classes."""
    generator = torch.Generator().manual_seed(0)
    prototypes = (torch.rand(CLASSES, *SHAPE, generator=generator) > 0.5).float()
    y = torch.arange(600) % CLASSES
    flips = torch.rand(600, *SHAPE, generator=generator) < 0.1
    return torch.where(flips, 1 - prototypes[y], prototypes[y]), y


def test_sites_put_the_auxiliary_latent_first_in_the_guide_and_last_in_the_model(digits):
    x, y = digits
    model, guide = pair()
    guide_trace = poutine.trace(guide).get_trace(x[:6], None, size=60)
    model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x[:6], None, size=60)
    guide_sites = [name for name, site in guide_trace.nodes.items() if site["type"] == "sample" and name != "data"]
    assert guide_sites == ["a", "y", "z"] and guide_trace.nodes["y"]["infer"]["enumerate"] == "parallel"
    model_sites = [name for name, site in model_trace.nodes.items() if site["type"] == "sample" and name != "data"]
    assert model_sites == ["z", "y", "x", "a"]
    assert model_trace.nodes["a"]["value"] is guide_trace.nodes["a"]["value"]
    assert model_trace.nodes["a"]["fn"].event_shape == (5,) and model_trace.nodes["x"]["scale"] == 10.0
    labelled = poutine.trace(model).get_trace(x[:6], y[:6], size=6)
    assert labelled.nodes["y_aux"]["infer"]["is_auxiliary"] and labelled.nodes["y_aux"]["scale"] == 10.0


def test_the_classifier_is_the_guides_and_has_one_set_of_parameters(digits):
    x, y = digits
    model, guide = pair()
    with poutine.trace(param_only=True) as params:  # labelled data: the guide does not classify
        guide_trace = poutine.trace(guide).get_trace(x[:4], y[:4], size=4)
        poutine.replay(model, guide_trace)(x[:4], y[:4], size=4)
    store = pyro.get_param_store()
    names = {name for name in params.trace.nodes if name.startswith("classifier$$$")}
    assert names  # the auxiliary term reaches the classifier through the model, labelled data alone
    guide_parameters = dict(guide.named_parameters())
    for name in names:
        assert store._params[name] is guide_parameters[name.replace("$$$", ".")]


def test_semi_supervised_training_learns_the_classes_from_thirty_labels_each(digits):
    x, y = digits
    model, guide = pair()
    labels = hide_labels(y, 30, seed=0)
    assert (labels == MISSING_LABEL).float().mean() == 0.85
    before = pyro_vae.elbo(model, guide, x[:200], num_samples=5).mean()
    history = pyro_vae.fit(model, guide, (x, labels), epochs=10, loss="enum", validation=None, lr=3e-3, seed=0)
    assert history.estimator == "TraceEnum_ELBO"
    assert pyro_vae.elbo(model, guide, x[:200], num_samples=5).mean() > before + 5
    assert (guide.label_posterior(x).probs.argmax(-1) == y).float().mean() > 0.95
    averaged = guide.label_posterior(x, num_samples=8).probs
    assert averaged.shape == (600, CLASSES) and torch.allclose(averaged.sum(-1), torch.ones(600))
    generative = class_scores(model, guide, x[:60], CLASSES, num_samples=10).predict()
    assert (generative == y[:60]).float().mean() > 0.9
    log_px = pyro_vae.log_likelihood(model, guide, x[:60], num_samples=50)
    assert (log_px - pyro_vae.elbo(model, guide, x[:60], num_samples=5)).mean() > 0  # a tighter bound


def test_label_posterior_at_the_mean_is_deterministic(digits):
    x, _ = digits
    _, guide = pair()
    assert torch.equal(guide.label_posterior(x[:10]).logits, guide.label_posterior(x[:10]).logits)


def test_samples_are_drawn_for_requested_classes():
    model, _ = pair()
    drawn = model(None, torch.tensor([0, 1, 2, 2]))
    assert drawn.shape == (4, *SHAPE) and set(drawn.unique().tolist()) <= {0.0, 1.0}
