"""Per-site rates: the KL term split over the latent sites."""

import math

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.rates import latent_rates


def model(x, size=None):
    with pyro.plate("data", size or len(x), subsample=x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        z1 = pyro.sample("z1", dist.Normal(z, 1.0))
        pyro.sample("x", dist.Normal(z1, 0.5), obs=x)


def guide(x, size=None):
    with pyro.plate("data", size or len(x), subsample=x):
        z = pyro.sample("z", dist.Normal(0.5 * x, 0.6))
        pyro.sample("z1", dist.Normal(z, 1.0))  # q(z1 | z) = p(z1 | z): a collapsed layer


def test_rates_are_each_sites_kl_and_a_collapsed_layer_spends_nothing():
    x = torch.tensor([-1.0, 0.0, 2.0])
    pyro.set_rng_seed(0)
    rates = latent_rates(model, guide, x, num_samples=20000)
    assert list(rates) == ["z", "z1"]
    analytic = torch.distributions.kl_divergence(dist.Normal(0.5 * x, 0.6), dist.Normal(0.0, 1.0))
    torch.testing.assert_close(rates["z"], analytic, atol=0.02, rtol=0.0)
    assert torch.equal(rates["z1"], torch.zeros(3))  # the same density at the same draw
    assert rates["z"].shape == (3,) and math.isfinite(rates["z"].sum().item())


def test_rates_of_the_stock_hierarchical_vae_name_its_layers():
    from pyro_vae.guides import TopDownGuide
    from pyro_vae.models import HierarchicalVAE

    pyro.set_rng_seed(0)
    hierarchical = HierarchicalVAE.build((1, 4, 4), 2, (8,), "mlp", "bernoulli", layers=3)
    top_down = TopDownGuide.build_for(hierarchical, (1, 4, 4), (8,), "mlp")
    rates = latent_rates(hierarchical, top_down, torch.ones(5, 1, 4, 4), num_samples=400)
    assert list(rates) == ["z", "z2", "z1"] and all(rate.shape == (5,) for rate in rates.values())
    assert all(rate.mean() > 0 for rate in rates.values())  # a KL: an untrained guide is not the prior


def masked_model(x, size=None):
    with pyro.plate("data", size or len(x), subsample=x), pyro.poutine.mask(mask=torch.tensor([True, False, True])):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def masked_guide(x, size=None):
    with pyro.plate("data", size or len(x), subsample=x), pyro.poutine.mask(mask=torch.tensor([True, False, True])):
        pyro.sample("z", dist.Normal(0.5 * x, 0.6))


def test_a_masked_row_spends_nothing():
    pyro.set_rng_seed(0)
    rates = latent_rates(masked_model, masked_guide, torch.tensor([-1.0, 0.0, 2.0]), num_samples=50)
    assert rates["z"][1] == 0 and (rates["z"][[0, 2]] > 0).all()


def reshaping_model(x, size=None):
    """Folds the batch into a fixed shape: no room for a particle dimension."""
    with pyro.plate("data", size or len(x), subsample=x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z.reshape(len(x)), 0.5), obs=x)


def test_a_program_without_room_for_particles_is_evaluated_one_draw_at_a_time():
    x = torch.tensor([-1.0, 0.0, 2.0])
    pyro.set_rng_seed(0)
    rates = latent_rates(reshaping_model, guide_of_z, x, num_samples=4000)
    analytic = torch.distributions.kl_divergence(dist.Normal(0.5 * x, 0.6), dist.Normal(0.0, 1.0))
    torch.testing.assert_close(rates["z"], analytic, atol=0.05, rtol=0.0)


def guide_of_z(x, size=None):
    with pyro.plate("data", size or len(x), subsample=x):
        pyro.sample("z", dist.Normal(0.5 * x, 0.6))
