"""The importance-weighted objectives, checked on a linear-Gaussian model whose posterior and
evidence are known, against an independent computation from the same draws, and against Pyro's
RenyiELBO(alpha=0)."""

import functools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import RenyiELBO

import pyro_vae
import pyro_vae.program
from pyro_vae import fit
from pyro_vae.distributions import ReparameterizedNormal
from pyro_vae.importance_weighted import DoublyReparameterizedELBO, ImportanceWeightedELBO
from pyro_vae.scoring import PARTICLE_PLATE

NOISE = 0.7  # x | z ~ N(w z, NOISE²), z ~ N(0, 1)
GUIDE_PARAMS = ("a", "b", "log_s")
ESTIMATORS = {"iwae": ImportanceWeightedELBO, "dreg": DoublyReparameterizedELBO}


def model(x, size=None):
    w = pyro.param("w", torch.tensor(1.3))
    with pyro.plate("data", size or len(x), subsample=x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(w * z, NOISE), obs=x)


def guide(x, size=None):
    """q(z | x) = N(a x + b, exp(log_s)²)."""
    a, b = pyro.param("a", torch.tensor(0.3)), pyro.param("b", torch.tensor(0.1))
    log_s = pyro.param("log_s", torch.tensor(-0.5))
    with pyro.plate("data", size or len(x), subsample=x):
        pyro.sample("z", dist.Normal(a * x + b, log_s.exp()))


@pytest.fixture(autouse=True)
def fresh_parameters():
    pyro.clear_param_store()


def set_params(**values: float) -> None:
    store = pyro.get_param_store()
    for name, value in values.items():
        store[name] = torch.tensor(value)


def exact_posterior(w: float = 1.0) -> dict[str, float]:
    """The guide's parameters at which q(z | x) is the posterior of the model with weight w."""
    precision = 1 + w**2 / NOISE**2
    return {"w": w, "a": w / NOISE**2 / precision, "b": 0.0, "log_s": -0.5 * math.log(precision)}


def gradients(names=(*GUIDE_PARAMS, "w")) -> dict[str, torch.Tensor]:
    return {name: pyro.param(name).unconstrained().grad.clone() for name in names}


def step(estimator, x, size, seed=None) -> tuple[float, dict[str, torch.Tensor]]:
    """Minus the bound and the gradient of one ``loss_and_grads`` call."""
    if seed is not None:
        pyro.set_rng_seed(seed)
    store = pyro.get_param_store()
    for name in (*GUIDE_PARAMS, "w"):
        if name in store:
            store.get_param(name).unconstrained().grad = None
    loss = estimator.loss_and_grads(model, guide, x, size=size)
    return loss, gradients()


def guide_draws(x, particles: int, seed: int) -> torch.Tensor:
    """The draws ``[K, B]`` the estimator makes from ``seed`` (its first pass runs the guide first)."""
    pyro.set_rng_seed(seed)
    with poutine.block(), pyro.plate(PARTICLE_PLATE, particles, dim=-2):
        return poutine.trace(guide).get_trace(x, size=len(x)).nodes["z"]["value"].detach()


def independent(x, draws, size, dreg: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The bound and its gradient (IWAE's, or DReG's in the per-parameter form of Tucker et al.),
    computed with closed-form densities from the noise behind ``draws``."""
    leaf = {name: pyro.param(name).detach().clone().requires_grad_() for name in (*GUIDE_PARAMS, "w")}
    loc, scale = leaf["a"] * x + leaf["b"], leaf["log_s"].exp()
    noise = (draws - loc.detach()) / scale.detach()
    z = loc + scale * noise
    log_p = dist.Normal(leaf["w"] * z, NOISE).log_prob(x) + dist.Normal(0.0, 1.0).log_prob(z)
    log_w = log_p - dist.Normal(loc, scale).log_prob(z)
    factor = size / len(x)
    bound = factor * (log_w.logsumexp(0) - math.log(len(draws))).sum()
    if not dreg:
        grads = torch.autograd.grad(bound, list(leaf.values()))
        return bound, {name: -g for name, g in zip(leaf, grads, strict=True)}
    weights = torch.softmax(log_w.detach(), 0)
    (model_grad,) = torch.autograd.grad(factor * (weights * log_w).sum(), [leaf["w"]], retain_graph=True)
    stopped = log_p - dist.Normal(loc.detach(), scale.detach()).log_prob(z)
    guide_grads = torch.autograd.grad(factor * (weights**2 * stopped).sum(), [leaf[name] for name in GUIDE_PARAMS])
    return bound, {"w": -model_grad} | {name: -g for name, g in zip(GUIDE_PARAMS, guide_grads, strict=True)}


@pytest.mark.parametrize("loss", sorted(ESTIMATORS))
@pytest.mark.parametrize("particles", [1, 6])
def test_bound_and_gradient_match_an_independent_computation(loss, particles):
    x = torch.linspace(-1.5, 2.0, 5)
    size = 40  # a minibatch of 5 of 40 data: the factor 8 multiplies the per-datum bounds
    value, grads = step(ESTIMATORS[loss](particles), x, size, seed=3)
    bound, expected = independent(x, guide_draws(x, particles, seed=3), size, dreg=loss == "dreg")
    assert value == pytest.approx(-bound.item(), rel=1e-5)
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("particles", [1, 10])
def test_at_the_exact_posterior_the_bound_is_the_evidence_and_dregs_guide_gradient_vanishes(particles, vectorize):
    """Also one particle at a time: each particle's second pass must hold its own draws."""
    set_params(**exact_posterior())
    x = torch.tensor([-1.0, 0.2, 1.7])
    evidence = dist.Normal(0.0, math.sqrt(1 + NOISE**2)).log_prob(x).sum() * 2  # size 6: factor 2
    iwae_loss, iwae_grads = step(ImportanceWeightedELBO(particles, vectorize_particles=vectorize), x, 6, seed=0)
    dreg_loss, dreg_grads = step(DoublyReparameterizedELBO(particles, vectorize_particles=vectorize), x, 6, seed=0)
    assert iwae_loss == pytest.approx(-evidence.item(), rel=1e-5) and dreg_loss == pytest.approx(iwae_loss)
    assert max(dreg_grads[name].abs().item() for name in GUIDE_PARAMS) < 1e-5
    assert max(iwae_grads[name].abs().item() for name in GUIDE_PARAMS) > 1e-2  # the score term's noise


def test_dreg_has_iwaes_mean_gradient_and_lower_variance():
    set_params(a=0.45, b=0.15, log_s=-0.7)
    x, repeats = torch.tensor([0.8, -0.4]), 600
    samples = {}
    for loss, estimator in ESTIMATORS.items():
        draws = [step(estimator(8), x, 2)[1] for _ in range(repeats)]
        samples[loss] = torch.stack([torch.stack([g[name] for name in GUIDE_PARAMS]) for g in draws])
    iwae, dreg = samples["iwae"], samples["dreg"]
    standard_error = ((iwae.var(0) + dreg.var(0)) / repeats).sqrt()
    assert ((iwae.mean(0) - dreg.mean(0)).abs() < 4 * standard_error).all()
    variance_ratio = dreg.var(0).sum() / iwae.var(0).sum()
    assert variance_ratio < 0.5, f"DReG's gradient variance is {variance_ratio:.2f} of IWAE's"


def chain_model(x, size=None):
    c = pyro.param("c", torch.tensor(0.8))
    with pyro.plate("data", size or len(x), subsample=x):
        z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
        z2 = pyro.sample("z2", dist.Normal(c * z1, 1.0))
        pyro.sample("x", dist.Normal(z2, NOISE), obs=x)


def chain_guide(x, size=None, normal=dist.Normal):
    """Top-down: q(z1 | x) q(z2 | z1, x), sharing the model's weight c."""
    c, a, d = pyro.param("c", torch.tensor(0.8)), pyro.param("a", torch.tensor(0.2)), pyro.param("d", torch.tensor(0.4))
    log_s1, log_s2 = pyro.param("log_s1", torch.tensor(-0.4)), pyro.param("log_s2", torch.tensor(-0.6))
    with pyro.plate("data", size or len(x), subsample=x):
        z1 = pyro.sample("z1", normal(a * x, log_s1.exp()))
        pyro.sample("z2", normal(c * z1 + d * x, log_s2.exp()))


@pytest.mark.parametrize("normal", [dist.Normal, ReparameterizedNormal])
def test_dreg_stays_unbiased_with_a_hierarchical_guide_that_shares_the_models_parameters(normal):
    """The second guide density depends on the first draw and on the model's own weight c: the
    path through z1 into q(z2 | z1) and c's two roles must both keep their IWAE mean (also with
    the stock guides' Normal, whose density at its own draw has no z in it)."""
    names, x, repeats = ("c", "a", "d", "log_s1", "log_s2"), torch.tensor([1.1, -0.3]), 800
    samples = {}
    for loss, estimator in ESTIMATORS.items():
        runs = []
        for _ in range(repeats):
            store = pyro.get_param_store()
            for name in set(names) & set(store.keys()):
                store.get_param(name).unconstrained().grad = None
            estimator(6).loss_and_grads(chain_model, functools.partial(chain_guide, normal=normal), x, size=2)
            runs.append(torch.stack([pyro.param(name).unconstrained().grad for name in names]))
        samples[loss] = torch.stack(runs)
    iwae, dreg = samples["iwae"], samples["dreg"]
    standard_error = ((iwae.var(0) + dreg.var(0)) / repeats).sqrt()
    assert ((iwae.mean(0) - dreg.mean(0)).abs() < 4 * standard_error).all(), (iwae.mean(0), dreg.mean(0))


def test_renyi_alpha_zero_agrees_on_one_unscaled_datum_and_scales_inside_the_log_mean_exp_otherwise():
    """RenyiELBO(alpha=0) takes the log-mean-exp of the scaled log weights (pyro-ppl/pyro#3104):
    equal to the per-datum bound for one datum with no minibatch factor, otherwise
    Σ_i log-mean-exp_k ((N / B) log w_ik) instead of (N / B) Σ_i log-mean-exp_k log w_ik."""
    particles = 7

    def renyi(x, size):
        pyro.set_rng_seed(5)
        elbo = RenyiELBO(alpha=0, num_particles=particles, vectorize_particles=True, max_plate_nesting=2)
        return elbo.loss(model, guide, x, size=size)

    def ours(x, size):
        pyro.set_rng_seed(5)
        return ImportanceWeightedELBO(particles).loss(model, guide, x, size=size)

    one = torch.tensor([0.6])
    assert renyi(one, 1) == pytest.approx(ours(one, 1), rel=1e-6)
    x, size = torch.linspace(-1.0, 1.0, 4), 40
    draws = guide_draws(x, particles, seed=5)
    with torch.no_grad():
        log_w = (
            dist.Normal(1.3 * draws, NOISE).log_prob(x)
            + dist.Normal(0.0, 1.0).log_prob(draws)
            - dist.Normal(0.3 * x + 0.1, math.exp(-0.5)).log_prob(draws)
        )
    scaled_inside = ((size / len(x) * log_w).logsumexp(0) - math.log(particles)).sum()
    per_datum = size / len(x) * (log_w.logsumexp(0) - math.log(particles)).sum()
    assert renyi(x, size) == pytest.approx(-scaled_inside.item(), rel=1e-5)
    assert ours(x, size) == pytest.approx(-per_datum.item(), rel=1e-5)
    assert abs(scaled_inside - per_datum) > 1.0


def sizeless_model(x):
    """The linear-Gaussian model written with ``pyro.plate("data")``: no size at all."""
    with pyro.plate("data"):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0))
        pyro.sample("x", dist.Normal(1.3 * z, NOISE), obs=x)


def sizeless_guide(x):
    with pyro.plate("data"):
        pyro.sample("z", dist.Normal(0.3 * x + 0.1, math.exp(-0.5)))


def test_a_data_plate_without_a_size_gives_the_bound_of_the_sized_program():
    x = torch.linspace(-1.0, 1.0, 5)
    pyro.set_rng_seed(4)
    sized = ImportanceWeightedELBO(20).loss(model, guide, x, size=5)
    pyro.set_rng_seed(4)
    assert ImportanceWeightedELBO(20).loss(sizeless_model, sizeless_guide, x) == pytest.approx(sized, rel=1e-6)
    pyro.set_rng_seed(4)
    bound = pyro_vae.program.bind(sizeless_model), pyro_vae.program.bind(sizeless_guide)
    scaled = ImportanceWeightedELBO(20).loss(*bound, x, size=50)  # as fit calls it: size / rows outside
    assert scaled == pytest.approx(10 * sized, rel=1e-5)


def auxiliary_model(x, size=None):
    """The linear-Gaussian model with a training-only term 0.5 log N(x; z, 1) (an auxiliary site)."""
    w = pyro.param("w", torch.tensor(1.3))
    with pyro.plate("data", size or len(x), subsample=x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(w * z, NOISE), obs=x)
        with poutine.scale(scale=0.5):
            pyro.sample("x_aux", dist.Normal(z, 1.0), obs=x, infer={"is_auxiliary": True})


@pytest.mark.parametrize("loss", sorted(ESTIMATORS))
def test_auxiliary_terms_enter_outside_the_log_mean_exp(loss):
    """M2's classification term is no part of p(x, z): it is added to the bound, averaged over
    the particles, rather than tilting the importance weights."""
    x, size, particles = torch.linspace(-1.0, 1.5, 4), 12, 6
    pyro.set_rng_seed(8)
    plain = ESTIMATORS[loss](particles).loss(model, guide, x, size=size)
    pyro.set_rng_seed(8)
    with_term = ESTIMATORS[loss](particles).loss(auxiliary_model, guide, x, size=size)
    draws = guide_draws(x, particles, seed=8)
    term = size / len(x) * 0.5 * dist.Normal(draws, 1.0).log_prob(x).mean(0).sum()
    assert with_term == pytest.approx(plain - term.item(), rel=1e-5)


def test_a_failed_vectorized_attempt_spends_no_random_draws():
    """A program that cannot take the particle dimension gets the draws it would get evaluated one
    particle at a time from the start (so a resumed run repeats an uninterrupted one)."""
    x = torch.randn(16)
    bn_model = BatchNormModel()
    pyro.set_rng_seed(2)
    tried = ImportanceWeightedELBO(4)
    first = tried.loss(bn_model, guide, x, size=16)
    assert not tried.vectorize
    pyro.set_rng_seed(2)
    assert ImportanceWeightedELBO(4, vectorize_particles=False).loss(bn_model, guide, x, size=16) == first


def global_model(x, size=None):
    shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
    with pyro.plate("data", size or len(x), subsample=x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z + shift, NOISE), obs=x)


SHIFT_DRAWS = []


def global_guide(x, size=None):
    loc = pyro.param("shift_loc", torch.tensor(0.0))
    SHIFT_DRAWS.append(pyro.sample("shift", dist.Normal(loc, 0.1)))
    a = pyro.param("a", torch.tensor(0.3))
    with pyro.plate("data", size or len(x), subsample=x):
        pyro.sample("z", dist.Normal(a * x, 0.6))


def test_global_latents_are_drawn_once_and_shared_by_the_particles():
    x = torch.randn(6) + 2.0
    pyro.set_rng_seed(0)
    SHIFT_DRAWS.clear()
    ImportanceWeightedELBO(5).loss(global_model, global_guide, x, size=12)
    _inspection, drawn, in_particles = SHIFT_DRAWS
    assert in_particles.shape == () and torch.equal(in_particles, drawn)  # one draw, not one per particle
    pyro.set_rng_seed(0)
    with pytest.raises(ValueError, match=r"global latent sites \['shift'\].*loss='iwae'"):
        DoublyReparameterizedELBO(5).loss_and_grads(global_model, global_guide, x, size=12)
    history = fit(global_model, global_guide, x, loss="iwae", num_particles=4, epochs=60, batch_size=6, lr=0.05, seed=0)
    assert pyro.param("shift_loc").item() > 1.0  # the global is learned through the shared draws
    assert history.estimator == "ImportanceWeightedELBO"


def test_non_reparameterizable_guides_are_refused_by_name():
    def discrete_guide(x, size=None):
        with pyro.plate("data", size or len(x), subsample=x):
            pyro.sample("z", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match=r"guide's sites \['z'\] cannot be reparameterized"):
        ImportanceWeightedELBO(3).loss(model, discrete_guide, torch.ones(2))


class BatchNormModel(torch.nn.Module):
    """A model whose BatchNorm1d on z cannot take the particle dimension: evaluated particle by particle."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.BatchNorm1d(1), torch.nn.Linear(1, 1))

    def forward(self, x, size=None):
        pyro.module("bn_model", self)
        with pyro.plate("data", size or len(x), subsample=x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(self.net(z.unsqueeze(-1)).squeeze(-1), NOISE), obs=x)


@pytest.mark.parametrize("loss", sorted(ESTIMATORS))
def test_fit_trains_with_either_objective_and_falls_back_to_one_particle_at_a_time(loss):
    x = torch.randn(64) * 1.5
    bn_model = BatchNormModel()
    history = fit(bn_model, guide, x, loss=loss, num_particles=4, epochs=40, batch_size=32, lr=0.02, seed=1)
    assert history.estimator == ESTIMATORS[loss].__name__
    assert history.train_elbo[-1] > history.train_elbo[0]


def test_validation_follows_the_bound_that_training_maximizes():
    """With lr 0 the parameters stay put: the validation column is the K-draw bound (as
    log_likelihood estimates it), above the one-draw ELBO of the same guide."""
    train, held_out = torch.randn(32), torch.linspace(-2.0, 2.0, 400)
    set_params(a=0.2, b=0.4, log_s=-1.5, w=1.3)
    history = fit(model, guide, train, validation=held_out, loss="iwae", num_particles=50, epochs=1, lr=0.0, seed=0)
    bound = pyro_vae.log_likelihood(model, guide, held_out, num_samples=50).mean().item()
    elbo = pyro_vae.elbo(model, guide, held_out, num_samples=50).mean().item()
    assert history.val_elbo[0] == pytest.approx(bound, abs=0.02) and bound > elbo + 0.2
    assert history.objective == "IWAE bound (K = 50)"
    assert fit(model, guide, train, epochs=1, lr=0.0, seed=0).objective == "ELBO"
