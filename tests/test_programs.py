"""Programs as users write them: signatures, plates without size, globals, pyro.param in a
checkpoint, particle loops for programs that take no particle dimension, owned parameters."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal
from pyro.poutine.util import site_is_subsample
from torch import nn

import pyro_vae
from pyro_vae.convention import Convention
from pyro_vae.guides import AutoAmortizedNormal
from pyro_vae.program import bind, inspect_pair


class NoisyLinear(nn.Module):
    """z ~ N(0, 1); x ~ N(w z, σ² I) with a global σ (a pyro.param outside the data plate) and an
    encoder with BatchNorm1d on its inputs (it takes no extra particle dimension)."""

    def __init__(self, features: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features))
        self.encoder = nn.Sequential(nn.BatchNorm1d(features), nn.Linear(features, 2))

    def model(self, x):
        pyro.module("noisy_linear", self)
        sigma = pyro.param("sigma", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample("obs", dist.Normal(z.unsqueeze(-1) * self.weight, sigma).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("noisy_linear", self)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.encoder(x).unbind(-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3))


def linear_data(rows: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, 1, generator=generator)
    return z * torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(rows, 3, generator=generator)


def test_bind_passes_what_each_signature_takes():
    calls = []

    def plain(x):
        calls.append(("plain", x))

    def positional(xs, ys=None):
        calls.append(("positional", ys))

    def full(x, y=None, size=None):
        calls.append(("full", y, size))

    x = torch.zeros(10)
    bind(plain)(x, None, size=10)
    bind(positional)(x, "labels", size=10)
    bind(full)(x, "labels", size=10)
    assert calls == [("plain", x), ("positional", "labels"), ("full", "labels", 10)]
    with pytest.raises(TypeError, match="takes no labels"):
        bind(plain)(x, "labels")


def test_a_plate_without_size_is_scaled_to_the_data_set():
    """fit's minibatch of 10 of 40 rows: the per-datum terms count 4 times, the global prior once."""

    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        pyro.sample("loc", dist.Delta(torch.tensor(0.5)))

    x = torch.linspace(-1, 1, 10)
    trace = pyro.poutine.trace(pyro.poutine.condition(bind(model), {"loc": torch.tensor(0.0)})).get_trace(
        x, None, size=40
    )
    trace.compute_log_prob()
    assert torch.allclose(trace.nodes["x"]["log_prob_sum"], 4 * dist.Normal(0.0, 1.0).log_prob(x).sum())
    assert trace.nodes["loc"]["scale"] == 1.0
    inspection = inspect_pair(model, guide, x, size=40)
    assert inspection.global_latents == ("loc",) and inspection.local_latents == ()


def test_trains_and_scores_a_global_noise_scale_in_closed_form():
    """log p(x | σ) of x = w z + ε, z ~ N(0, 1), ε ~ N(0, σ² I) is N(0, w wᵀ + σ² I): the scores,
    with σ learned as a global pyro.param, match it."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    program = NoisyLinear()
    x = linear_data(600)
    pyro_vae.fit(program.model, program.guide, x, epochs=60, batch_size=100, lr=2e-2, seed=0, validation=None)
    program.eval()  # BatchNorm with its running statistics, as for any scoring
    sigma = pyro.param("sigma").detach()
    assert 0.2 < sigma < 0.45  # the data's noise is 0.3
    w = program.weight.detach()
    exact = dist.MultivariateNormal(torch.zeros(3), torch.outer(w, w) + sigma**2 * torch.eye(3)).log_prob(x[:50])
    ll = pyro_vae.log_likelihood(program.model, program.guide, x[:50], num_samples=2000)
    assert torch.allclose(ll, exact, atol=0.05)


class BatchNormDecoder(NoisyLinear):
    """The decoder has BatchNorm1d: a leading particle dimension makes its input 3-D, which it reads
    as (batch, channels, length) and refuses ("running_mean should contain ... elements")."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))

    def model(self, x):
        pyro.module("noisy_linear", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
            pyro.sample("obs", dist.Normal(self.decoder(z.unsqueeze(-1)), 0.5).to_event(1), obs=x)


def test_particles_are_looped_for_a_program_with_batch_norm():
    """The loop evaluates one particle after another, the same numbers as K calls of one
    particle; the failed vectorized attempt leaves the random stream where it was."""
    pyro.clear_param_store()
    program = BatchNormDecoder().eval()
    x = linear_data(20)
    pyro.set_rng_seed(1)
    looped = pyro_vae.log_weights(program.model, program.guide, x, num_samples=4)
    assert looped.shape == (4, 20) and torch.isfinite(looped).all()
    pyro.set_rng_seed(1)
    one_at_a_time = torch.cat([pyro_vae.log_weights(program.model, program.guide, x, num_samples=1) for _ in range(4)])
    assert torch.equal(looped, one_at_a_time)


def test_checkpoint_keeps_pyro_param_values(tmp_path):
    pyro.clear_param_store()
    program = NoisyLinear()
    x = linear_data(200)
    pyro_vae.fit(program.model, program.guide, x, epochs=5, batch_size=50, lr=5e-2, seed=0, validation=None)
    program.eval()
    trained_sigma = pyro.param("sigma").item()
    assert not math.isclose(trained_sigma, 1.0)
    with pytest.raises(TypeError, match="pass example="):
        pyro_vae.save_checkpoint(tmp_path / "no.pt", program.model, program.guide)
    path = pyro_vae.save_checkpoint(tmp_path / "p.pt", program.model, program.guide, example=x[:4])
    pyro.set_rng_seed(2)
    before = pyro_vae.elbo(program.model, program.guide, x[:30])

    pyro.clear_param_store()
    fresh = NoisyLinear().eval()
    with pytest.raises(ValueError, match="pass example="):
        pyro_vae.load_checkpoint(path, fresh.model, fresh.guide)
    pyro.clear_param_store()
    pyro_vae.load_checkpoint(path, fresh.model, fresh.guide, example=x[:4])
    assert pyro.param("sigma").item() == pytest.approx(trained_sigma, rel=1e-6)
    assert pyro.get_param_store()._constraints["sigma"] is constraints.positive
    pyro.set_rng_seed(2)
    assert torch.allclose(pyro_vae.elbo(fresh.model, fresh.guide, x[:30]), before, atol=1e-5)


def test_a_broken_tensor_of_another_model_does_not_fail_a_fit():
    pyro.clear_param_store()
    pyro.param("someone_elses", torch.full((3,), float("nan")))
    program = NoisyLinear()
    history = pyro_vae.fit(program.model, program.guide, linear_data(100), epochs=2, batch_size=50, validation=None)
    assert all(math.isfinite(value) for value in history.train_elbo)
    assert torch.isnan(pyro.param("someone_elses")).all()  # not ours: left as it was


def test_fit_without_a_seed_draws_from_the_callers_random_state():
    """seed=None does not reseed: the run follows the caller's stream (with the old default seed=0
    every run was the same whatever the caller had seeded)."""

    def run(caller_seed: int) -> list[float]:
        pyro.clear_param_store()
        torch.manual_seed(caller_seed)
        program = NoisyLinear()
        torch.manual_seed(caller_seed)
        return pyro_vae.fit(program.model, program.guide, linear_data(40), epochs=2, batch_size=20).train_elbo

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_a_plate_that_states_its_full_size_scales_itself():
    """pyro.plate("data", N_TOTAL, subsample=x) is scaled by the plate, once, as in Pyro's SVI;
    pyro.plate("data", len(x), subsample_size=8) by the plate and by fit's N / len(x)."""

    def full_size(x):
        with pyro.plate("data", 300, subsample=x):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def subsampling(x):
        with pyro.plate("data", len(x), subsample_size=8) as rows:
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[rows])

    x = torch.zeros(64)
    assert pyro.poutine.trace(bind(full_size)).get_trace(x, None, size=270).nodes["x"]["scale"] == 300 / 64
    assert pyro.poutine.trace(bind(subsampling)).get_trace(x, None, size=270).nodes["x"]["scale"] == 270 / 8


class TwiceRegistered(nn.Module):
    """One decoder under two names in Pyro's store (a module attribute and pyro.module)."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder, self.encoder = nn.Linear(2, 4), nn.Linear(4, 4)

    def model(self, x):
        pyro.module("program", self)
        pyro.module("decoder_again", self.decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("program", self)
        with pyro.plate("data", len(x)):
            loc, raw = self.encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def test_fastsvi_steps_each_of_the_pairs_tensors_once_and_no_others():
    x = linear_data(64).repeat(1, 2)[:, :4]
    after = {}
    for loss in ("auto", "trace"):
        pyro.clear_param_store()
        foreign = pyro.param("foreign", torch.zeros(3))
        pyro.get_param_store()._params["foreign"].grad = torch.ones(3)  # another program's pending gradient
        torch.manual_seed(0)
        program = TwiceRegistered()
        pyro_vae.fit(
            program.model, program.guide, x, epochs=1, batch_size=64, lr=0.1, seed=0, loss=loss, validation=None
        )
        after[loss] = program.decoder.weight.detach().clone()
        assert torch.equal(pyro.param("foreign").detach(), foreign.detach())
    assert torch.equal(after["auto"], after["trace"])  # one Adam step, not one per store name


def test_loading_store_parameters_refuses_what_does_not_fit(tmp_path):
    def program(width: int):
        def model(x):
            noise = pyro.param("noise", torch.ones(width), constraint=constraints.positive)
            with pyro.plate("data", len(x)):
                pyro.sample("x", dist.Normal(0.0, noise).to_event(1), obs=x)

        return model, lambda x: None

    x = torch.zeros(5, 3)
    pyro.clear_param_store()
    path = pyro_vae.save_checkpoint(tmp_path / "n.pt", *program(3), example=x)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"another shape.*'noise': \(\(3,\), \(1,\)\)"):
        pyro_vae.load_checkpoint(path, *program(1), example=x)
    assert torch.equal(pyro.param("noise").detach(), torch.ones(1))  # nothing copied

    pyro.clear_param_store()
    pyro.param("noise", torch.full((3,), 7.0))  # another program's, of the same name

    def no_noise(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(torch.zeros(3), 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"\['noise'\] that this model and guide do not have"):
        pyro_vae.load_checkpoint(path, no_noise, lambda x: None, example=x)
    assert torch.equal(pyro.param("noise").detach(), torch.full((3,), 7.0))

    module_path = pyro_vae.save_checkpoint(tmp_path / "m.pt", NoisyLinear(), NoisyLinear())
    with pytest.raises(ValueError, match=r"holds the model's nn\.Module weights"):
        pyro_vae.load_checkpoint(module_path, no_noise, lambda x: None)


def test_a_deterministic_site_is_not_the_observed_data():
    """pyro.deterministic records a value as an observed Delta; it is not the data."""

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.deterministic("z_sum", z.sum(-1))
            pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def without_record(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("obs", dist.Normal(z, 1.0).to_event(1), obs=x)

    x = torch.randn(6, 2)
    assert inspect_pair(model, guide, x).observed_site == "obs"
    scores = []
    for program in (model, without_record):
        torch.manual_seed(0)
        scores.append(pyro_vae.log_weights(program, guide, x, num_samples=3))
    assert torch.equal(*scores)  # the record adds nothing to a score
    with pytest.raises(ValueError, match=r"no observed sample site named 'z_sum'.*deterministic"):
        inspect_pair(model, guide, x, convention=Convention(observed_site="z_sum"))


def global_only(x):
    """A model written ``model(x)`` with one global latent: Pyro's AutoGuides are amortized for it."""
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


@pytest.mark.parametrize("autoguide", [AutoDelta, AutoNormal])
def test_pyro_s_autoguides_are_called_as_their_model_is(autoguide):
    """An AutoGuide's forward(*args, **kwargs) hands everything to the model: it takes what the
    model takes (no size= for model(x))."""
    pyro.clear_param_store()
    guide = autoguide(global_only)
    bound = bind(guide)
    assert (bound.labels, bound.takes_size) == ("none", False)
    x = torch.randn(20, 2) + 1.0
    pyro_vae.fit(global_only, guide, x, epochs=2, batch_size=10, validation=None)
    assert pyro_vae.elbo(global_only, guide, x).shape == (20,)


def with_noise_scale(x):
    """A global noise scale and a per-datum z, written ``model(x)``."""
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, sigma).to_event(1), obs=x)


def with_noise_scale_sized(x, y=None, size=None):
    """The same model stating the data set's size: pyro.plate("data", size, subsample=x)."""
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", size, subsample=x):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, sigma).to_event(1), obs=x)


@pytest.mark.parametrize("model", [with_noise_scale, with_noise_scale_sized])
def test_an_autoguidelist_with_an_amortized_part_traces_one_data_plate(model):
    """The list creates every plate of its model (the data plate as long as its first batch) and
    AutoAmortizedNormal, wrapped in an AutoCallable, creates the data plate again: one site of it
    reaches the trace, the one that holds the batch, for batches of any length."""
    pyro.clear_param_store()
    guide = AutoGuideList(model)
    guide.append(AutoNormal(poutine.block(model, expose=["sigma"])))
    guide.append(AutoAmortizedNormal(model, hidden=(8,), global_sites="skip"))
    x = torch.randn(40, 2) * 2.0
    for loss in ("auto", "trace"):
        history = pyro_vae.fit(model, guide, x, epochs=2, batch_size=7, loss=loss, validation=None)
        assert all(math.isfinite(value) for value in history.train_elbo)
    trace = poutine.trace(bind(guide)).get_trace(x[:9], None, size=40)
    plates = [(name, len(site["value"])) for name, site in trace.nodes.items() if site_is_subsample(site)]
    assert plates == [("data", 9)]
    assert torch.isfinite(pyro_vae.log_likelihood(model, guide, x, num_samples=4)).all()
