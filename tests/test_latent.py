"""Latent-space tools on tiny models whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import latent
from pyro_vae.convention import Convention
from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VAE

DATA_DIM = 4
W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.5]])  # decoder x = W z


def linear_model(x=None, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        return pyro.sample("x", dist.Normal(z @ W.T, 0.1).to_event(1), obs=x)


def first_two_guide(x, y=None, size=None):
    """q(z | x) centred on the first two coordinates of x."""
    with pyro.plate("data", size, subsample=x):
        return pyro.sample("z", dist.Normal(x[..., :2], 0.5).to_event(1))


@pytest.fixture
def stock_pair(digits):
    pyro.set_rng_seed(0)
    model = VAE.build(digits.x_shape, 3, [16], "mlp", "continuous-bernoulli")
    guide = AmortizedNormal.build(digits.x_shape, 3, [16], "mlp")
    return model, guide


def test_encode_is_the_posterior_mean_or_draws(stock_pair, digits):
    _, guide = stock_pair
    x = digits.test_x[:5]
    assert torch.allclose(latent.encode(guide, x), guide.posterior(x).mean)
    draws = latent.encode(guide, x, num_samples=7)
    assert draws.shape == (7, 5, 3)
    assert not torch.allclose(draws[0], draws[1])


def test_decode_and_reconstruct_use_the_mean_of_p_x_given_z(stock_pair, digits):
    model, guide = stock_pair
    z = torch.randn(6, 3)
    mean = latent.decode(model, z)
    assert torch.allclose(mean, model.decode(z))
    assert torch.equal(latent.decode(model, z), mean)  # the mean is the same on every call
    draws = [latent.decode(model, z, mean=False) for _ in range(2)]
    assert draws[0].shape == (6, *digits.x_shape)
    assert not torch.allclose(draws[0], draws[1]) and not torch.allclose(draws[0], mean)
    assert ((draws[0] >= 0) & (draws[0] <= 1)).all()  # the continuous Bernoulli's support
    many = latent.decode(model, z.repeat(400, 1), mean=False).reshape(400, *mean.shape)
    assert torch.allclose(many.mean(0), mean, atol=0.07)  # variance <= 1/12: 4.5 standard errors
    x = digits.test_x[:4]
    assert torch.allclose(latent.reconstruct(model, guide, x), model.decode(guide.posterior(x).mean))


def test_interpolation_ends_at_the_two_reconstructions(stock_pair, digits):
    model, guide = stock_pair
    x_a, x_b = digits.test_x[0], digits.test_x[1]
    ends = latent.reconstruct(model, guide, torch.stack([x_a, x_b]))
    for method in ("linear", "spherical"):
        path = latent.interpolate(model, guide, x_a, x_b, steps=6, method=method)
        assert path.shape == (6, *digits.x_shape)
        assert torch.allclose(path[0], ends[0], atol=1e-4) and torch.allclose(path[-1], ends[1], atol=1e-4)


def test_linear_and_spherical_paths():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    linear = latent.interpolate_latents(a, b, 5, "linear")
    assert torch.allclose(linear[2], torch.tensor([1.5, 1.5]))
    spherical = latent.interpolate_latents(a, b, 5, "spherical")
    assert torch.allclose(spherical.norm(dim=-1), torch.full((5,), 3.0), atol=1e-5)  # stays on the circle
    assert torch.allclose(spherical[2], torch.tensor([3 / math.sqrt(2)] * 2), atol=1e-5)
    with pytest.raises(ValueError, match="linear"):
        latent.interpolate_latents(a, b, 5, "cubic")


def test_attribute_vector_and_its_application():
    x = torch.tensor([[1.0, 2.0, 0, 0], [3.0, 2.0, 0, 0], [0.0, -1.0, 0, 0], [0.0, 1.0, 0, 0]])
    vector = latent.attribute_vector(first_two_guide, x, torch.tensor([True, True, False, False]))
    assert torch.allclose(vector, torch.tensor([2.0, 2.0]))
    edited = latent.apply_attribute(linear_model, first_two_guide, x, vector, strengths=[0.0, 1.0, -0.5])
    assert edited.shape == (3, 4, DATA_DIM)
    assert torch.allclose(edited[0], x[:, :2] @ W.T)  # strength 0: the reconstruction
    assert torch.allclose(edited[1] - edited[0], (vector @ W.T).expand(4, -1), atol=1e-6)
    assert torch.allclose(edited[2] - edited[0], (-0.5 * vector @ W.T).expand(4, -1), atol=1e-6)
    with pytest.raises(ValueError, match="with and without"):
        latent.attribute_vector(first_two_guide, x, torch.ones(4, dtype=torch.bool))


def test_manifold_follows_kingma_and_wellings_grid():
    z = latent.manifold_latents(5, bound=0.95)
    assert z.shape == (25, 2)
    edge = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.95)).item()
    assert z[0].tolist() == pytest.approx([-edge, edge])  # top left: low z1, high z2
    assert z[-1].tolist() == pytest.approx([edge, -edge])
    assert torch.allclose(z[12], torch.zeros(2), atol=1e-6)  # the centre of the unit square
    images = latent.manifold_grid(linear_model, points_per_side=5)
    assert torch.allclose(images, z @ W.T, atol=1e-6)


def test_traverse_moves_one_dimension_per_row():
    x = torch.tensor([0.5, -1.0, 0.0, 0.0])
    values = (-2.0, 0.0, 2.0)
    grid = latent.traverse(linear_model, first_two_guide, x, values)
    assert grid.shape == (2, 3, DATA_DIM)
    for dim in range(2):
        expected = x[:2].repeat(3, 1)
        expected[:, dim] = torch.tensor(values)
        assert torch.allclose(grid[dim], expected @ W.T, atol=1e-6)


def test_scatter_coordinates_are_the_codes_or_their_principal_components(tmp_path):
    codes = torch.randn(50, 2)
    same, description = latent.scatter_coordinates(codes)
    assert description == "z" and np.allclose(same, codes.double().numpy())
    direction = torch.tensor([1.0, 2.0, 0.0, -1.0, 0.5]) / math.sqrt(6.25)
    line = torch.linspace(-3, 3, 50).unsqueeze(1) * direction + 0.01 * torch.randn(50, 5)
    projected, description = latent.scatter_coordinates(line)
    assert "PCA" in description
    assert abs(np.corrcoef(projected[:, 0], np.linspace(-3, 3, 50))[0, 1]) > 0.999
    x = torch.randn(30, DATA_DIM)
    path = latent.latent_scatter(first_two_guide, x, torch.arange(30) % 3, tmp_path / "scatter.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_debias_weights_favour_the_rare_group():
    generator = torch.Generator().manual_seed(0)
    common = torch.randn(190, DATA_DIM, generator=generator) * 0.3
    rare = torch.randn(10, DATA_DIM, generator=generator) * 0.3 + torch.tensor([4.0, 4.0, 0, 0])
    x = torch.cat([common, rare])
    weights = latent.debias_weights(first_two_guide, x, bins=10, alpha=0.01)
    assert weights.shape == (200,) and torch.isclose(weights.sum(), torch.tensor(1.0, dtype=weights.dtype))
    assert weights[190:].mean() > 5 * weights[:190].mean()
    assert weights[190:].sum() > 0.3  # 5 % of the data, resampled far more often
    smoother = latent.debias_weights(first_two_guide, x, bins=10, alpha=1.0)
    ratio = lambda w: (w[190:].mean() / w[:190].mean()).item()  # noqa: E731
    assert ratio(smoother) < ratio(weights)  # alpha evens the weights out
    with pytest.raises(ValueError, match="alpha"):
        latent.debias_weights(first_two_guide, x, alpha=0.0)


def deterministic_model(x=None, y=None, size=None):
    """``linear_model`` with its decoder output a ``pyro.deterministic`` site, an auxiliary site
    and its data at ``"obs"``: only ``"obs"`` holds the data."""
    with pyro.plate("data", size, subsample=x):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("aux", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
        loc = pyro.deterministic("loc", z @ W.T, event_dim=1)
        return pyro.sample("obs", dist.Normal(loc, 0.1).to_event(1), obs=x)


def test_deterministic_and_auxiliary_sites_are_not_the_data():
    z = torch.randn(3, 2)
    assert torch.allclose(latent.decode(deterministic_model, z), z @ W.T)
    needs_data = lambda x, y=None, size=None: deterministic_model(x, y, size=x.shape[0])  # noqa: E731
    assert torch.allclose(latent.decode(needs_data, z, x_shape=(DATA_DIM,)), z @ W.T)
    x = torch.randn(5, DATA_DIM)
    assert torch.allclose(latent.reconstruct(deterministic_model, first_two_guide, x), x[:, :2] @ W.T)


BATCH = Convention(data_plate="batch", observed_site="obs")


def batch_model(x=None, y=None, size=None):
    """``linear_model`` with the data plate named "batch", the data at "obs" and a second latent."""
    with pyro.plate("batch", size, subsample=x):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        return pyro.sample("obs", dist.Normal(z @ W.T + 0 * w.unsqueeze(-1), 0.1).to_event(1), obs=x)


def batch_guide(x, y=None, size=None):
    with pyro.plate("batch", size, subsample=x):
        pyro.sample("w", dist.Normal(x[..., 2], 1.0))
        return pyro.sample("z", dist.Normal(x[..., :2], 0.5).to_event(1))


def test_latent_tools_take_a_convention_and_a_site():
    x = torch.tensor([[1.0, 2.0, 0, 0], [3.0, 2.0, 0, 0], [0.0, -1.0, 0, 0], [0.0, 1.0, 0, 0]])
    codes = dict(site="z", convention=BATCH)
    assert torch.equal(latent.encode(batch_guide, x, **codes), x[:, :2])
    assert torch.allclose(latent.reconstruct(batch_model, batch_guide, x, **codes), x[:, :2] @ W.T)
    with pytest.raises(ValueError, match="site="):
        latent.reconstruct(batch_model, batch_guide, x, convention=BATCH)
    with pytest.raises(ValueError, match=r"convention=Convention\(data_plate"):
        latent.encode(batch_guide, x, site="z")
    path = latent.interpolate(batch_model, batch_guide, x[0], x[1], steps=3, **codes)
    assert torch.allclose(path[1], x[:2, :2].mean(0) @ W.T, atol=1e-6)
    vector = latent.attribute_vector(batch_guide, x, torch.tensor([True, True, False, False]), **codes)
    edited = latent.apply_attribute(batch_model, batch_guide, x, vector, [1.0], **codes)
    assert torch.allclose(edited[0], (x[:, :2] + vector) @ W.T, atol=1e-6)
    assert latent.traverse(batch_model, batch_guide, x[0], (0.0, 1.0), **codes).shape == (2, 2, DATA_DIM)
    grid = latent.manifold_grid(batch_model, 3, convention=BATCH)
    assert torch.allclose(grid, latent.manifold_latents(3) @ W.T, atol=1e-6)
    assert latent.debias_weights(batch_guide, x, **codes).shape == (4,)


def column_model(x=None, y=None, size=None):
    """``linear_model`` with the data plate at dim=-2 and a plate over the features at dim=-1:
    z has batch dims [N, 1], and ``loc[..., 0, :]`` is right only for that layout."""
    with pyro.plate("data", size, subsample=x, dim=-2):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        loc = z @ W.T
        with pyro.plate("features", DATA_DIM, dim=-1):
            return pyro.sample("x", dist.Normal(loc[..., 0, :], 0.1), obs=x)


def column_guide(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x, dim=-2):
        return pyro.sample("z", dist.Normal(x[..., None, :2], 0.5).to_event(1))


def test_a_data_plate_at_dim_minus_two_gives_batch_first_codes_and_data():
    x = torch.randn(5, DATA_DIM)
    assert torch.equal(latent.encode(column_guide, x), x[:, :2])
    assert latent.encode(column_guide, x, num_samples=3).shape == (3, 5, 2)
    z = torch.randn(6, 2)
    assert torch.allclose(latent.decode(column_model, z), z @ W.T)
    assert latent.decode(column_model, z, mean=False).shape == (6, DATA_DIM)
    assert torch.allclose(latent.reconstruct(column_model, column_guide, x), x[:, :2] @ W.T)
    path = latent.interpolate(column_model, column_guide, x[0], x[1], steps=3)
    assert torch.allclose(path, torch.stack([x[0, :2], x[:2, :2].mean(0), x[1, :2]]) @ W.T, atol=1e-6)
    grid = latent.manifold_grid(column_model, 3)
    assert torch.allclose(grid, latent.manifold_latents(3) @ W.T, atol=1e-6)
    assert latent.debias_weights(column_guide, x).shape == (5,)
    with pytest.raises(ValueError, match=r"takes \[rows, 1, 2\]"):
        latent.decode(column_model, torch.randn(6, 3))
