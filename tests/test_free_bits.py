"""Free bits: the ELBO with each latent site's KL term floored at λ nats per datum."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch.nn.functional import softplus

import pyro_vae
from pyro_vae.free_bits import FreeBitsELBO
from pyro_vae.kl_weight import KLWeightMessenger, kl_weighted


def model(x, y=None, size=None):
    """Two latent sites, neither of which x depends on: each KL term is the whole story."""
    with pyro.plate("data", size or len(x), subsample=x):
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("u", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 2.0), obs=x)


START = {"m": 2.0, "log_s": -1.0, "m_u": 0.1, "log_s_u": -0.1}  # KL terms of about 1.3 and 0.01 nats per datum


def guide(x, y=None, size=None):
    m, log_s, m_u, log_s_u = (pyro.param(name, torch.tensor(value)) for name, value in START.items())
    with pyro.plate("data", size or len(x), subsample=x):
        pyro.sample("z", dist.Normal(m * x, log_s.exp()))
        pyro.sample("u", dist.Normal(m_u, log_s_u.exp()))


def loss_and_grads(elbo, x, size=None, seed=0, wrap=lambda fn: fn):
    pyro.clear_param_store()
    with poutine.seed(rng_seed=seed):
        loss = elbo.loss_and_grads(wrap(model), wrap(guide), x, size=size)
    store = pyro.get_param_store()
    return loss, {name: store.get_param(name).unconstrained().grad.clone() for name in START}


def site_terms(x, size, seed=0):
    """The scaled sums of log q - log p of each latent site, and of log p(x), from the draws
    of the same seed, computed with torch's own Normal densities."""
    pyro.clear_param_store()
    with poutine.seed(rng_seed=seed):
        drawn = poutine.trace(guide).get_trace(x, size=size)
    factor = size / len(x)
    m, log_s, m_u, log_s_u = (torch.tensor(value) for value in START.values())
    q = {"z": torch.distributions.Normal(m * x, log_s.exp()), "u": torch.distributions.Normal(m_u, log_s_u.exp())}
    standard = torch.distributions.Normal(0.0, 1.0)
    kl = {
        site: factor
        * (q[site].log_prob(drawn.nodes[site]["value"]) - standard.log_prob(drawn.nodes[site]["value"])).sum()
        for site in q
    }
    return kl, factor * torch.distributions.Normal(0.0, 2.0).log_prob(x).sum()


def test_a_floor_below_every_term_is_trace_elbo():
    x, floor = torch.linspace(-1.0, 1.0, 7), 1e-6
    kl, _ = site_terms(x, 7)
    assert min(kl.values()) > floor * 7
    loss, grads = loss_and_grads(FreeBitsELBO(floor), x)
    reference, reference_grads = loss_and_grads(Trace_ELBO(), x)
    assert loss == pytest.approx(reference, rel=1e-6)
    for name in grads:
        assert torch.allclose(grads[name], reference_grads[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("free_bits", [0.05, 0.5, 5.0])
def test_each_site_is_floored_at_free_bits_per_datum_of_the_whole_data_set(free_bits):
    """A minibatch of 10 of 100 data: each site's term is N/B times its minibatch sum, and the
    floor λ N, with N = 100."""
    x, size = torch.linspace(-1.0, 1.0, 10), 100
    kl, log_likelihood = site_terms(x, size)
    expected = -(log_likelihood - sum(torch.clamp(term, min=free_bits * size) for term in kl.values()))
    loss, _ = loss_and_grads(FreeBitsELBO(free_bits), x, size=size)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    assert FreeBitsELBO(free_bits).loss(*_seeded(model, guide), x, size=size) == pytest.approx(loss, rel=1e-6)


def _seeded(*programs):
    return [poutine.seed(program, rng_seed=0) for program in programs]


def test_a_site_below_its_floor_gets_no_gradient_from_its_kl_term():
    """u's KL term lies below a floor of 0.5 nats per datum, z's above it: u's guide parameters
    get no gradient, z's get the ELBO's."""
    x = torch.linspace(-1.0, 1.0, 10)
    kl, _ = site_terms(x, 10)
    assert kl["u"] / 10 < 0.5 < kl["z"] / 10
    _, floored = loss_and_grads(FreeBitsELBO(0.5), x)
    _, plain = loss_and_grads(Trace_ELBO(), x)
    assert torch.equal(floored["m_u"], torch.zeros(())) and torch.equal(floored["log_s_u"], torch.zeros(()))
    assert plain["m_u"] != 0 and plain["log_s_u"] != 0
    for name in ("m", "log_s"):
        assert floored[name] != 0 and torch.allclose(floored[name], plain[name], rtol=1e-5)


def test_a_kl_weight_scales_the_floor_with_the_term():
    x, weight, free_bits = torch.linspace(-1.0, 1.0, 10), 0.25, 50.0
    _, log_likelihood = site_terms(x, 10)
    handler = KLWeightMessenger(weight)
    loss, _ = loss_and_grads(FreeBitsELBO(free_bits), x, wrap=lambda fn: kl_weighted(fn, handler))
    assert loss == pytest.approx(-(log_likelihood.item() - 2 * weight * free_bits * 10), rel=1e-6)


class Collapsing(torch.nn.Module):
    """x ~ N(w z + b, σ²) fitted to pure noise: the ELBO's optimum ignores z (KL 0)."""

    def __init__(self):
        super().__init__()
        self.w, self.b, self.log_sigma = (torch.nn.Parameter(torch.tensor(value)) for value in (0.5, 0.0, 0.0))

    def forward(self, x, y=None, size=None):
        pyro.module("collapsing", self)
        with pyro.plate("data", size or len(x), subsample=x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(self.w * z + self.b, self.log_sigma.exp()), obs=x)


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(1, 2)

    def forward(self, x, y=None, size=None):
        pyro.module("encoder", self)
        loc, raw = self.net(x.unsqueeze(-1)).unbind(-1)
        with pyro.plate("data", size or len(x), subsample=x):
            pyro.sample("z", dist.Normal(loc, softplus(raw) + 1e-3))


@pytest.mark.parametrize("free_bits, low, high", [(0.0, 0.0, 0.2), (1.0, 0.8, 1.6)])
def test_free_bits_keep_a_collapsing_site_at_about_its_floor(free_bits, low, high):
    """Below the floor only the likelihood acts on the guide, and it always gains from more
    information: the KL rises to about λ (a little above: the floor acts on each minibatch's
    estimate), where plain ELBO training closes the site (0.10 nats after these 60 epochs, 0.06
    after 150, falling)."""
    x = torch.randn(512, generator=torch.Generator().manual_seed(0))
    pyro.set_rng_seed(0)
    decoder, encoder = Collapsing(), Encoder()
    history = pyro_vae.fit(decoder, encoder, x, free_bits=free_bits, epochs=60, batch_size=64, lr=0.03, validation=None)
    assert history.estimator == ("FreeBitsELBO" if free_bits else "FastSVI")
    rate = pyro_vae.latent_rates(decoder, encoder, x, num_samples=20)["z"].mean().item()
    assert low <= rate <= high


def test_fit_names_the_floored_objective_and_refuses_what_cannot_carry_it():
    x = torch.randn(32)
    pyro.set_rng_seed(0)
    history = pyro_vae.fit(Collapsing(), Encoder(), x, free_bits=0.5, epochs=1, validation=None)
    assert (history.objective, history.validation_objective) == ("ELBO with free bits (λ = 0.5)", "ELBO")
    with pytest.raises(ValueError, match="loss='auto' or 'trace', not 'iwae'"):
        pyro_vae.fit(Collapsing(), Encoder(), x, free_bits=0.5, loss="iwae", num_particles=2)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="free_bits must be a finite number of nats ≥ 0"):
            pyro_vae.fit(Collapsing(), Encoder(), x, free_bits=bad)
    with pytest.raises(ValueError, match="use vectorize_particles=False"):
        pyro_vae.fit(Collapsing(), Encoder(), x, free_bits=0.5, num_particles=2, vectorize_particles=True)
    with pytest.raises(ValueError, match="for none use Trace_ELBO"):
        FreeBitsELBO(0.0)


def vector_pair(as_plate: bool, with_global: bool):
    """z holds 5 numbers per datum, as an event or as a plate inside the data plate; optionally a
    global latent g outside the data plate."""

    def draw(name, fn):
        if as_plate:
            with pyro.plate("dims", 5, dim=-1):
                return pyro.sample(name, fn.expand([5]))
        return pyro.sample(name, fn.expand([5]).to_event(1))

    def model(x, y=None, size=None):
        if with_global:
            pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", size or len(x), subsample=x, dim=-2 if as_plate else -1):
            draw("z", dist.Normal(0.0, 1.0))

    def guide(x, y=None, size=None):
        if with_global:
            pyro.sample("g", dist.Normal(0.2, 0.5))
        with pyro.plate("data", size or len(x), subsample=x, dim=-2 if as_plate else -1):
            draw("z", dist.Normal(0.1, 0.9))

    return model, guide


@pytest.mark.parametrize("as_plate", [False, True], ids=["event", "plate"])
def test_the_floor_counts_data_not_elements_and_leaves_global_latents_alone(as_plate):
    """A floor far above every term: the loss is λ N for z, whether its 5 numbers per datum are
    an event or a plate, plus g's own (unfloored) KL term."""
    x, size, free_bits = torch.zeros(10, 1) if as_plate else torch.zeros(10), 100, 50.0
    model, guide = vector_pair(as_plate, with_global=True)
    elbo = FreeBitsELBO(free_bits, max_plate_nesting=2)
    with poutine.seed(rng_seed=0):
        loss = elbo.loss(model, guide, x, size=size)
    with poutine.seed(rng_seed=0):
        drawn = poutine.trace(guide).get_trace(x, size=size)
    g = drawn.nodes["g"]["value"]
    global_kl = dist.Normal(0.2, 0.5).log_prob(g) - dist.Normal(0.0, 1.0).log_prob(g)
    assert loss == pytest.approx(free_bits * size + global_kl.item(), rel=1e-6)


def test_each_particle_is_floored_on_its_own():
    x = torch.linspace(-1.0, 1.0, 10)
    with poutine.seed(rng_seed=0):
        both = FreeBitsELBO(1.0, num_particles=2).loss(model, guide, x)
    with poutine.seed(rng_seed=0):
        one_by_one = [FreeBitsELBO(1.0).loss(model, guide, x) for _ in range(2)]
    assert both == pytest.approx(sum(one_by_one) / 2, rel=1e-6) and one_by_one[0] != one_by_one[1]
    with pytest.raises(ValueError, match="use vectorize_particles=False"):
        FreeBitsELBO(1.0, num_particles=2, vectorize_particles=True)


def test_a_resumed_run_keeps_the_objective_it_started_with():
    x, states = torch.randn(32), []
    pyro.set_rng_seed(0)
    decoder, encoder = Collapsing(), Encoder()
    pyro_vae.fit(decoder, encoder, x, epochs=1, validation=None, on_epoch_end=states.append)
    with pytest.raises(ValueError, match="trained the ELBO, and these options train the ELBO with free bits"):
        pyro_vae.fit(decoder, encoder, x, epochs=2, validation=None, free_bits=0.5, resume=states[-1])


def test_a_point_mass_guide_is_refused_before_training():
    from pyro_vae.guides import AmortizedDelta
    from pyro_vae.models import VAE

    model, delta = VAE.build((4,), 2, (8,), "mlp", "gaussian"), AmortizedDelta.build((4,), 2, (8,), "mlp")
    with pytest.raises(ValueError, match="site 'z' is a point mass \\(Delta\\)"):
        pyro_vae.fit(model, delta, torch.randn(16, 4), free_bits=1.0, epochs=1, validation=None)


def test_a_guide_without_rsample_is_refused_by_name():
    def discrete_guide(x, y=None, size=None):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("u", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="site 'z' \\(Bernoulli\\) has no rsample"):
        FreeBitsELBO(1.0).loss(model, discrete_guide, torch.randn(4))


def test_the_command_line_trains_with_free_bits_and_refuses_them_with_an_iwae_loss(tmp_path):
    import json

    from tests.test_cli import pyro_vae as cli

    run = tmp_path / "run"
    common = ("train", "--dataset", "digits", "--epochs", "2", "--latent-dim", "2", "--hidden", "8", "--quiet")
    result = cli(*common, "--model", "hierarchical", "--free-bits", "0.5", "--score-samples", "3", "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "config.json").read_text())["training"]["free_bits"] == 0.5
    refused = cli(*common, "--free-bits", "0.5", "--loss", "iwae", "--out", str(tmp_path / "other"))
    assert refused.returncode == 2 and "loss='auto' or 'trace'" in refused.stderr and "Traceback" not in refused.stderr
