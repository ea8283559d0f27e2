"""The stock VAE model and guides as Pyro programs."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine

import pyro_vae
from pyro_vae.guides import AmortizedDelta, AmortizedNormal
from pyro_vae.models import VAE


def test_model_follows_the_convention_and_generates():
    model = VAE.build((1, 8, 8), 3, (16,), "conv", "bernoulli")
    x = (torch.rand(5, 1, 8, 8) > 0.5).float()
    trace = poutine.trace(model).get_trace(x, size=100)
    assert trace.nodes["x"]["is_observed"]
    assert trace.nodes["z"]["value"].shape == (5, 3)
    frames = {frame.name: frame for frame in trace.nodes["z"]["cond_indep_stack"]}
    assert frames["data"].full_size == 100, "size is the plate size, so minibatches are scaled"
    assert trace.nodes["x"]["scale"] == 20.0
    drawn = model(None, size=7)
    assert drawn.shape == (7, 1, 8, 8) and set(drawn.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="size="):
        model(None)


def test_normal_guide_scale_has_a_floor():
    guide = AmortizedNormal.build((4,), 2, (8,), min_scale=0.05)
    with torch.no_grad():
        for parameter in guide.parameters():
            parameter.fill_(-100.0)
    assert guide.posterior(torch.ones(3, 4)).base_dist.scale.min() >= 0.05


def test_delta_guide_is_a_deterministic_autoencoder(digits):
    """With the N(0, I) prior on the codes (MAP); ``beta=0`` drops it for the plain autoencoder."""
    model = VAE.build((1, 8, 8), 4, (64,), "mlp", "continuous-bernoulli")
    guide = AmortizedDelta.build((1, 8, 8), 4, (64,))
    z1 = poutine.trace(guide).get_trace(digits.test_x[:3]).nodes["z"]["value"]
    z2 = poutine.trace(guide).get_trace(digits.test_x[:3]).nodes["z"]["value"]
    assert torch.equal(z1, z2)
    history = pyro_vae.fit(model, guide, digits.train_x, epochs=10, progress=False)
    assert history.val_elbo[-1] > history.val_elbo[0]
    # Every importance weight of a point-mass guide is the same: IS adds nothing over the ELBO.
    pyro.set_rng_seed(0)
    elbo = pyro_vae.elbo(model, guide, digits.test_x[:20], num_samples=5)
    log_px = pyro_vae.log_likelihood(model, guide, digits.test_x[:20], num_samples=5)
    assert torch.allclose(elbo, log_px, atol=1e-4)
