"""fit's extra loss and the VAE-GAN term built on it (:mod:`pyro_vae.vae_gan`)."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import pyro_vae
from pyro_vae.gan import Discriminator
from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VAE
from pyro_vae.vae_gan import AdversarialTerm
from tests.test_pyro_examples import examples, grey_images, monkeypatch_module  # noqa: F401 (fixtures)

OPTIONS = {"epochs": 2, "batch_size": 64, "validation": None, "seed": 0, "progress": False}


def pair(shape=(1, 8, 8), seed: int = 0):
    torch.manual_seed(seed)
    return VAE.build(shape, 2, (16,), "mlp", "continuous-bernoulli"), AmortizedNormal.build(shape, 2, (16,), "mlp")


def parameters(*modules) -> list[torch.Tensor]:
    return [value.detach().clone() for module in modules for value in module.parameters()]


def test_a_zero_extra_loss_changes_nothing(digits):
    """Its zero gradient is added before the ELBO's: the same history and parameters, bit for bit."""
    x = digits.train_x[:256]
    model, guide = pair()
    plain = pyro_vae.fit(model, guide, x, **OPTIONS)
    expected = parameters(model, guide)
    pyro.clear_param_store()
    model, guide = pair()
    decoder = model.decoder
    extra = pyro_vae.fit(model, guide, x, extra_loss=lambda x, y: 0.0 * decoder(torch.zeros(1, 2)).sum(), **OPTIONS)
    assert plain.train_elbo == extra.train_elbo
    assert all(torch.equal(a, b) for a, b in zip(expected, parameters(model, guide), strict=True))


def test_the_extra_gradient_reaches_the_optimizer_and_only_the_pairs_parameters(digits):
    """A term of 1e6 x the decoder's last bias dominates that bias's gradient, so Adam's first step
    lowers every one of its entries by the learning rate; a tensor outside the pair that the term
    also reaches is neither stepped nor left with a gradient."""
    x = digits.train_x[:64]
    model, guide = pair()
    bias = model.decoder.mlp[-1].bias
    before, foreign = bias.detach().clone(), torch.ones(3, requires_grad=True)
    seen = []

    def term(batch: torch.Tensor, labels) -> torch.Tensor:
        seen.append(batch.shape)
        return 1e6 * bias.sum() + foreign.sum()

    history = pyro_vae.fit(model, guide, x, **{**OPTIONS, "epochs": 1, "lr": 1e-3}, extra_loss=term)
    assert seen == [x.shape]
    assert torch.allclose(bias.detach() - before, torch.full_like(before, -1e-3), atol=1e-7)
    assert foreign.grad is None and torch.equal(foreign.detach(), torch.ones(3))
    assert all(value.grad is None or not value.grad.any() for value in parameters(model, guide))
    assert math.isfinite(history.train_elbo[0])  # the history holds the ELBO, not the term


def test_extra_loss_errors_name_the_problem(digits):
    x = digits.train_x[:64]
    model, guide = pair()
    with pytest.raises(TypeError, match="must return a 0-d tensor"):
        pyro_vae.fit(model, guide, x, extra_loss=lambda x, y: x.mean(dim=0), **OPTIONS)
    with pytest.raises(FloatingPointError, match="extra loss became nan at epoch 1, step 1"):
        pyro_vae.fit(model, guide, x, extra_loss=lambda x, y: torch.tensor(math.nan), **OPTIONS)
    with pytest.raises(ValueError, match="captured step"):
        pyro_vae.fit(model, guide, x, extra_loss=lambda x, y: torch.tensor(0.0), capture=True, **OPTIONS)


def test_the_discriminator_learns_to_tell_data_from_the_vaes_output(digits):
    """With weight 0 the pair trains on its ELBO alone and the discriminator, stepped by the term,
    ends well below the log 4 of a discriminator that cannot tell; fit never steps it."""
    x = digits.train_x[:512]
    model, guide = pair()
    torch.manual_seed(1)
    discriminator = Discriminator((1, 8, 8), [16, 32], "patch")
    term = AdversarialTerm(model, guide, discriminator, weight=0.0, lr=1e-3)
    pyro_vae.fit(model, guide, x, extra_loss=term, **{**OPTIONS, "epochs": 10})
    assert len(term.discriminator_losses) == 10 * 8 == len(term.generator_losses)
    assert sum(term.discriminator_losses[-8:]) / 8 < 0.8 * math.log(4) < term.discriminator_losses[0]
    assert all(parameter.grad is None for parameter in discriminator.parameters())


def test_the_generator_term_moves_the_vaes_output_towards_the_data(digits):
    """Against a discriminator fixed at one that scores ink (the mean pixel), a weighted term
    raises the mean pixel of both the reconstructions and the prior's samples (a pair trained on
    its ELBO alone does not)."""
    x = digits.train_x[:256]
    results = {}
    for weight in (0.0, 500.0):
        pyro.clear_param_store()
        model, guide = pair()
        ink = torch.nn.Conv2d(1, 1, kernel_size=8)
        torch.nn.init.constant_(ink.weight, 1 / 64)
        torch.nn.init.constant_(ink.bias, -0.5)
        term = AdversarialTerm(model, guide, ink, weight=weight, lr=0.0)
        pyro_vae.fit(model, guide, x, extra_loss=term, **{**OPTIONS, "epochs": 5, "lr": 1e-2})
        with torch.no_grad():
            results[weight] = (term.reconstructions(x).mean().item(), term.samples(x).mean().item())
    assert results[500.0][0] > results[0.0][0] + 0.05 and results[500.0][1] > results[0.0][1] + 0.05


def test_pyros_tutorial_vae_trains_as_a_vae_gan(examples):  # noqa: F811 (a fixture)
    """Pyro's own VAE ("latent", "obs", no size, a flat 784-pixel image): the term finds its data
    site, and its ELBO and log p(x) stay defined after training."""
    vae_module, _ = examples
    pyro.clear_param_store()
    vae = vae_module.VAE(z_dim=4, hidden_dim=32)
    discriminator = Discriminator((784,), [32], "mlp")
    term = AdversarialTerm(vae.model, vae.guide, discriminator)
    x = grey_images(200, seed=1)
    history = pyro_vae.fit(vae.model, vae.guide, x, extra_loss=term, **OPTIONS)
    assert history.estimator == "FastSVI" and len(term.generator_losses) == 8
    assert term.reconstructions(x[:5]).shape == term.samples(x[:5]).shape == (5, 784)
    assert torch.isfinite(pyro_vae.log_likelihood(vae.model, vae.guide, x[:20], num_samples=20)).all()


def test_draws_carry_the_gradient_of_the_mean(digits):
    """compare="draw": binary draws of a Bernoulli site (what binarized data look like), whose
    gradient is the mean's (straight through); a reparameterizable site is drawn by rsample."""
    x = torch.bernoulli(digits.train_x[:32], generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model, guide = VAE.build((1, 8, 8), 2, (16,), "mlp", "bernoulli"), AmortizedNormal.build((1, 8, 8), 2, (16,))
    term = AdversarialTerm(model, guide, Discriminator((1, 8, 8), [8], "patch"), compare="draw")
    for drawn in (term.reconstructions(x), term.samples(x)):
        assert set(drawn.detach().unique().tolist()) <= {0.0, 1.0}
        bias = model.decoder.mlp[-1].bias
        (gradient,) = torch.autograd.grad(drawn.sum(), bias)
        assert torch.all(gradient > 0)  # d sigmoid(logit) / d logit, summed over the batch
    continuous = AdversarialTerm(*pair(), Discriminator((1, 8, 8), [8], "patch"), compare="draw")
    assert continuous.reconstructions(digits.train_x[:4]).requires_grad
    with pytest.raises(ValueError, match="compare must be one of"):
        AdversarialTerm(model, guide, Discriminator((1, 8, 8), [8], "patch"), compare="sample")
