"""FastSVI computes Pyro's Trace_ELBO (same value and gradients on the same draws), steps like
SVI, and hands the pairs it does not serve to Trace_ELBO or TraceEnum_ELBO (its fallback), on
the inspection's traces or at the first step that meets such a site. The one-step equality to
the bit over many pairs is in test_estimator_pairs.py."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from torch.distributions import constraints

import pyro_vae
import pyro_vae.training
from pyro_vae.fast_svi import FastSVI
from pyro_vae.guides import AmortizedNormal
from pyro_vae.kl_weight import KLWeightMessenger, kl_weighted
from pyro_vae.models import VAE
from pyro_vae.program import inspect_pair

SIZE = 1000  # the minibatch is 32 of 1000 data: every site is scaled by 1000/32


def stock_pair():
    return VAE.build((1, 8, 8), 4, (32,), "mlp", "bernoulli"), AmortizedNormal.build((1, 8, 8), 4, (32,), "mlp")


def param_model(x, y=None, size=None):
    """A user's model with raw pyro.param statements and a constrained parameter."""
    weight = pyro.param("weight", torch.full((3, x.shape[1]), 0.1))
    noise = pyro.param("noise", torch.tensor(0.5), constraint=constraints.positive)
    with pyro.plate("data", size, subsample=x):
        z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 3), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ weight, noise).to_event(1), obs=x)


def param_guide(x, y=None, size=None):
    projection = pyro.param("projection", torch.full((x.shape[1], 3), 0.05))
    scale = pyro.param("scale", torch.full((3,), 0.7), constraint=constraints.positive)
    with pyro.plate("data", size, subsample=x):
        pyro.sample("z", dist.Normal(x @ projection, scale).to_event(1))


def binary_batch():
    return (torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()


def loss_and_grads(loss_fn, parameters, *args, **kwargs):
    pyro.set_rng_seed(7)
    loss = loss_fn(*args, **kwargs)
    grads = torch.autograd.grad(loss, parameters)
    return loss.detach(), grads


@pytest.mark.parametrize("pair", ["stock", "pyro.param", "beta"])
def test_loss_and_gradients_equal_trace_elbo_on_the_same_draws(pair):
    pyro.clear_param_store()
    if pair == "pyro.param":
        model, guide, x = param_model, param_guide, torch.randn(32, 5)
    else:
        model, guide = stock_pair()
        x = binary_batch()
    if pair == "beta":
        handler = KLWeightMessenger(0.25)
        model, guide = kl_weighted(model, handler), kl_weighted(guide, handler)
    with poutine.trace(param_only=True) as capture:
        Trace_ELBO().differentiable_loss(model, guide, x, size=SIZE)
    parameters = [site["value"].unconstrained() for site in capture.trace.nodes.values()]
    assert len(parameters) >= 4

    fast_loss, fast_grads = loss_and_grads(FastSVI(model, guide, None).loss, parameters, x, size=SIZE)
    reference = Trace_ELBO().differentiable_loss
    pyro_loss, pyro_grads = loss_and_grads(reference, parameters, model, guide, x, size=SIZE)

    # A tolerance, not equality: differentiable_loss returns the float32 rounding of its float64
    # loss plus (surrogate - item(surrogate)), FastSVI.loss the float32 surrogate itself. SVI
    # steps compare to the bit (test_steps_match_pyro_svi and test_estimator_pairs.py).
    assert torch.isclose(fast_loss, pyro_loss, rtol=1e-6)
    for fast, stock in zip(fast_grads, pyro_grads, strict=True):
        assert torch.allclose(fast, stock, rtol=1e-5, atol=1e-7)
    pyro.set_rng_seed(8)  # other draws give another loss: the comparison above is not vacuous
    assert not torch.isclose(FastSVI(model, guide, None).loss(x, size=SIZE), pyro_loss)


def test_a_plate_that_draws_its_own_subsample_replays_the_guides_indices():
    """With ``subsample_size`` the plates draw random indices; the model must see the guide's
    (as ``poutine.replay`` gives them), or each z would be paired with another datum."""
    pyro.clear_param_store()
    data = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))

    def model(x, y=None, size=None):
        with pyro.plate("data", 100, subsample_size=4) as index:
            z = pyro.sample("z", dist.Normal(torch.zeros(4, 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=data[index])

    def guide(x, y=None, size=None):
        loc = pyro.param("loc", torch.zeros(100, 2))
        with pyro.plate("data", 100, subsample_size=4) as index:
            pyro.sample("z", dist.Normal(loc[index], 1.0).to_event(1))

    pyro.set_rng_seed(0)
    fast = FastSVI(model, guide, None).loss(data)
    pyro.set_rng_seed(0)
    assert torch.isclose(fast, Trace_ELBO().differentiable_loss(model, guide, data), rtol=1e-6)


def test_loss_is_computed_without_distribution_validation(monkeypatch):
    """Also for a global latent outside every plate, whose distribution reads the validation
    setting only when its density is computed."""
    checked = []
    monkeypatch.setattr(
        torch.distributions.Distribution, "_validate_sample", lambda self, value: checked.append(type(self))
    )

    def model(x, y=None, size=None):
        noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", size, subsample=x):
            pyro.sample("x", dist.Normal(0.0, noise).expand([len(x)]), obs=x)

    def guide(x, y=None, size=None):
        pyro.sample("noise", dist.LogNormal(pyro.param("m", torch.tensor(0.0)), 1.0))

    pyro.clear_param_store()
    assert torch.isfinite(FastSVI(model, guide, None).loss(torch.randn(5), size=5))
    assert checked == []
    with pyro.validation_enabled(True):
        dist.LogNormal(0.0, 1.0).log_prob(torch.tensor(1.0))
    assert checked  # the spy works


def test_steps_match_pyro_svi():
    """Ten Adam steps from the same start on the same draws end at the same parameters (to the
    bit: the gradients are equal to the bit, and Adam steps each tensor alone)."""
    x = torch.randn(32, 5)
    ends = []
    for stepper in (FastSVI, lambda m, g, o: SVI(m, g, o, Trace_ELBO())):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        svi = stepper(param_model, param_guide, pyro.optim.Adam({"lr": 0.05}))
        losses = [svi.step(x, size=SIZE) for _ in range(10)]
        ends.append((losses, {name: value.detach().clone() for name, value in pyro.get_param_store().items()}))
    (fast_losses, fast_params), (svi_losses, svi_params) = ends
    assert fast_losses == svi_losses
    assert fast_losses[-1] < fast_losses[0]
    assert fast_params.keys() == svi_params.keys()
    for name, value in svi_params.items():
        assert torch.equal(fast_params[name], value), name


def discrete_guide(x, y=None, size=None):
    probs = pyro.param("probs", torch.tensor(0.5), constraint=constraints.unit_interval)
    with pyro.plate("data", size, subsample=x):
        pyro.sample("z", dist.Bernoulli(probs).expand([x.shape[0]]))


def discrete_model(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        z = pyro.sample("z", dist.Bernoulli(0.3).expand([x.shape[0]]))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def enumerated_guide(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        pyro.sample("z", dist.Bernoulli(0.5).expand([x.shape[0]]), infer={"enumerate": "parallel"})


def empty_guide(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        pass


def as_fit_builds_it(model, guide, x) -> FastSVI:
    """FastSVI as fit builds it: checked on the traces of inspect_pair on the first batch."""
    inspection = inspect_pair(model, guide, x, size=SIZE)
    return FastSVI(
        inspection.model, inspection.guide, pyro.optim.Adam({"lr": 0.01}), max_plate_nesting=inspection.plate_nesting,
        traces=(inspection.model_trace, inspection.guide_trace),
    )  # fmt: skip


UNSERVED = [  # guide, reason on the inspection's traces, reason at the first step, fallback ELBO
    (discrete_guide, "no reparameterized sampler", "no reparameterized sampler", Trace_ELBO),
    (enumerated_guide, "enumerated", "enumerated", TraceEnum_ELBO),
    (empty_guide, "Found vars in model but not guide", "'z' is not sampled by the guide", Trace_ELBO),
]


@pytest.mark.parametrize("guide,reason,_,elbo", UNSERVED, ids=["discrete", "enumerated", "missing"])
def test_pairs_it_does_not_serve_are_named_on_the_first_batchs_traces(guide, reason, _, elbo):
    pyro.clear_param_store()
    svi = as_fit_builds_it(discrete_model, guide, torch.randn(8))
    assert reason in svi.fallback_reason
    assert type(svi.fallback_elbo) is elbo and svi.estimator == elbo.__name__
    assert isinstance(svi.fallback, SVI) and svi.fallback.loss_and_grads.__self__ is svi.fallback_elbo


@pytest.mark.parametrize("guide,_,reason,elbo", UNSERVED, ids=["discrete", "enumerated", "missing"])
def test_pairs_it_does_not_serve_are_named_at_the_first_step_without_traces(guide, _, reason, elbo):
    pyro.clear_param_store()
    svi = FastSVI(discrete_model, guide, pyro.optim.Adam({"lr": 0.01}))
    assert svi.estimator == "FastSVI" and svi.fallback is None  # nothing to decide on yet
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Found vars in model but not guide")  # Trace_ELBO's own, for empty_guide
        loss = svi.step(torch.randn(8), size=SIZE)
    assert math.isfinite(loss)
    assert reason in svi.fallback_reason
    assert type(svi.fallback_elbo) is elbo and svi.estimator == elbo.__name__


def test_supported_pairs_are_served():
    pyro.clear_param_store()
    model, guide = stock_pair()
    for svi in (
        as_fit_builds_it(model, guide, binary_batch()),
        as_fit_builds_it(param_model, param_guide, torch.randn(8, 5)),
    ):
        assert svi.estimator == "FastSVI"
        assert svi.fallback is None and svi.fallback_elbo is None and svi.fallback_reason is None
    svi.step(torch.randn(8, 5), size=SIZE)
    assert svi.estimator == "FastSVI" and svi.fallback is None


def test_vectorized_particles_are_handed_to_trace_elbo():
    svi = FastSVI(param_model, param_guide, pyro.optim.Adam({"lr": 0.01}), num_particles=2, vectorize_particles=True)
    assert svi.estimator == "Trace_ELBO" and "vectorized" in svi.fallback_reason
    assert svi.fallback_elbo.vectorize_particles and svi.fallback_elbo.num_particles == 2


@pytest.fixture
def made(monkeypatch) -> list:
    """The steppers fit makes, in order."""
    steppers = []
    original = pyro_vae.training._make_svi

    def spy(*args):
        steppers.append(original(*args))
        return steppers[-1]

    monkeypatch.setattr(pyro_vae.training, "_make_svi", spy)
    return steppers


def test_fit_uses_fast_svi_when_it_can_and_trace_elbo_otherwise(made):
    served = pyro_vae.fit(param_model, param_guide, torch.randn(64, 5), epochs=1, validation=None, progress=False)
    handed = pyro_vae.fit(discrete_model, discrete_guide, torch.randn(64), epochs=1, validation=None, progress=False)
    assert isinstance(made[0], FastSVI) and made[0].fallback is None
    assert served.estimator == "FastSVI"
    assert isinstance(made[1], FastSVI) and isinstance(made[1].fallback_elbo, Trace_ELBO)
    assert handed.estimator == "Trace_ELBO"


def test_missing_labels_after_the_first_batch_choose_the_enumerating_elbo(made):
    """A semi-supervised guide enumerates the missing labels, with sites that only rows of a
    missing label create; with every such row after the first minibatch, fit must still see
    them and use TraceEnum_ELBO (FastSVI would sample the labels without a score term)."""
    from pyro_vae.guides import ConditionalNormal
    from pyro_vae.models import ConditionalVAE

    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(256, 1, 8, 8, generator=generator) > 0.5).float()
    labels = torch.randint(3, (256,), generator=generator)
    histories = []
    for last_labelled in (256, 128):
        y = labels.clone()
        y[last_labelled:] = -1
        model = ConditionalVAE.build((1, 8, 8), 3, 2, [16], "mlp", "bernoulli")
        guide = ConditionalNormal.build((1, 8, 8), 3, 2, [16], "mlp")
        histories.append(pyro_vae.fit(model, guide, (x, y), epochs=1, batch_size=128, validation=None, progress=False))
    assert made[0].fallback is None and histories[0].estimator == "FastSVI"  # all labelled: nothing to enumerate
    assert isinstance(made[1].fallback_elbo, TraceEnum_ELBO) and "enumerated" in made[1].fallback_reason
    assert histories[1].estimator == "TraceEnum_ELBO"


def test_a_parameter_first_used_in_a_later_step_is_trained():
    """Parameters are those that received a gradient in this step, so one that a model uses only
    now and then (and that already sits in the store) is still stepped when it is used."""
    pyro.clear_param_store()
    pyro.param("sometimes", torch.tensor(0.0))  # already in the store, as after fit's checks
    calls = []

    def model(x, y=None, size=None):
        calls.append(1)
        shift = pyro.param("sometimes", torch.tensor(0.0)) if len(calls) % 2 == 0 else 0.0
        param_model(x + shift, size=size)

    svi = FastSVI(model, param_guide, pyro.optim.Adam({"lr": 0.1}))
    x = torch.randn(16, 5)
    svi.step(x, size=SIZE)
    assert pyro.param("sometimes").item() == 0.0  # not used in the first step
    svi.step(x, size=SIZE)
    assert pyro.param("sometimes").item() != 0.0


def test_a_guide_with_a_non_reparameterized_auxiliary_site_is_not_covered():
    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("u", dist.Bernoulli(0.5).expand([x.shape[0]]), infer={"is_auxiliary": True})
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0]]))

    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0]]))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    svi = as_fit_builds_it(model, guide, torch.randn(8))
    assert "'u'" in svi.fallback_reason and svi.estimator == "Trace_ELBO"
