"""FastSVI against Pyro's own SVI on a suite of model/guide pairs that cover Pyro's features.

Each pair is inspected on a minibatch of a data set of N rows (so every step scales the minibatch
to N), FastSVI is built as :func:`pyro_vae.fit` builds it, and one step of it is compared with one
step of :class:`pyro.infer.SVI` with the ELBO FastSVI says it uses, on the same draws. The
optimizer records the gradients it is handed instead of stepping, so both steps run their real
code paths and are compared on what an optimizer would see: the reported loss must be the same
Python float and every gradient the same tensor, bit for bit (``torch.equal``). For the pathwise
pairs that is FastSVI's own estimator against ``Trace_ELBO``; for the others FastSVI must name the
expected fallback ELBO and hand it the step untouched.

Then Pyro's errors and warnings through :func:`pyro_vae.fit` (after Pyro's
``tests/infer/test_valid_models.py``), and a semi-supervised pair whose enumerated site appears
only after the first batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import PyroOptim
from torch import nn
from torch.distributions import constraints
from torch.nn.functional import softplus

import pyro_vae
import pyro_vae.optim
import pyro_vae.training
from pyro_vae.fast_svi import FastSVI
from pyro_vae.guides import AmortizedDelta, AmortizedNormal, AutoAmortizedNormal, ConditionalNormal
from pyro_vae.kl_weight import KLWeightMessenger, kl_weighted
from pyro_vae.models import VAE, ConditionalVAE
from pyro_vae.program import inspect_pair

N = 1000  # rows of the data set; each minibatch has B of them, so every local site is scaled by N / B
B = 12
D = 3  # features of the toy data
K = 2  # latent dimensions of the toy programs
ELBOS = {"FastSVI": Trace_ELBO, "Trace_ELBO": Trace_ELBO, "TraceEnum_ELBO": TraceEnum_ELBO}


class RecordingOptim(PyroOptim):
    """An optimizer that records the gradients it is handed, by parameter name, and steps nothing."""

    def __init__(self) -> None:  # no PyroOptim state: nothing is stepped
        self.calls: list[dict[str, torch.Tensor]] = []

    def __call__(self, params, *args, **kwargs) -> None:
        names = pyro.get_param_store()._param_to_name
        self.calls.append({names[p]: p.grad.clone() for p in params if p.grad is not None})


def clear_gradients() -> None:
    for _, value in pyro.get_param_store().named_parameters():
        value.grad = None


def toy_batch(rows: int = B, features: int = D, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, features, generator=torch.Generator().manual_seed(seed))


def binary_batch() -> torch.Tensor:
    return (torch.rand(B, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()


def labels(rows: int = B, classes: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.randint(classes, (rows,), generator=torch.Generator().manual_seed(seed))


NETS: dict[str, nn.Module] = {}  # the toy programs' networks, made on first use (emptied by fresh_state)


def fresh_state() -> None:
    pyro.clear_param_store()
    NETS.clear()


def encoder(name: str, outputs: int = 2 * K, inputs: int = D) -> nn.Module:
    """A tiny amortizing network, registered with Pyro under ``name``; its initial weights come
    from a generator of their own, so that they are the same for every pair and seed."""
    if name not in NETS:
        net = NETS[name] = nn.Linear(inputs, outputs)
        generator = torch.Generator().manual_seed(len(name))
        with torch.no_grad():
            net.weight.copy_(0.5 * torch.randn(net.weight.shape, generator=generator))
            net.bias.copy_(0.1 * torch.randn(net.bias.shape, generator=generator))
    return pyro.module(name, NETS[name])


def normal_posterior(x: torch.Tensor, name: str = "enc") -> dist.Normal:
    loc, raw = encoder(name)(x).split(K, -1)
    return dist.Normal(loc, softplus(raw) + 0.1)


def decoder_loc(z: torch.Tensor) -> torch.Tensor:
    weight = pyro.param("decoder", lambda: 0.3 * torch.randn(K, D, generator=torch.Generator().manual_seed(3)))
    return z @ weight


# ---------------------------------------------------------------------------------------------
# The pairs: each builder returns (model, guide, x, y)


def gaussian_model(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(decoder_loc(z), 0.5).to_event(1), obs=x)


def gaussian_guide(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        pyro.sample("z", normal_posterior(x).to_event(1))


def stock():
    return VAE.build((1, 8, 8), 4, (32,), "mlp", "bernoulli"), AmortizedNormal.build((1, 8, 8), 4, (32,), "mlp")


def stock_pair():
    return (*stock(), binary_batch(), None)


def stock_delta_pair():
    model = VAE.build((1, 8, 8), 4, (32,), "mlp", "bernoulli")
    return model, AmortizedDelta.build((1, 8, 8), 4, (32,), "mlp"), binary_batch(), None


def auto_guide_pair():
    return gaussian_model, AutoAmortizedNormal(gaussian_model, hidden=(8,)), toy_batch(), None


def param_pair():
    """Raw pyro.param statements, one constrained."""

    def model(x, y=None, size=None):
        weight = pyro.param("weight", torch.full((K, D), 0.1))
        noise = pyro.param("noise", torch.tensor(0.5), constraint=constraints.positive)
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ weight, noise).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        projection = pyro.param("projection", torch.full((D, K), 0.05))
        scale = pyro.param("scale", torch.full((K,), 0.7), constraint=constraints.positive)
        with pyro.plate("data", size, subsample=x):
            pyro.sample("z", dist.Normal(x @ projection, scale).to_event(1))

    return model, guide, toy_batch(), None


def subsample_size_pair():
    """The plates draw their own minibatch of a data set they close over; the model must replay
    the guide's indices."""
    data = toy_batch(N, seed=5)

    def model(x, y=None, size=None):
        with pyro.plate("data", N, subsample_size=B) as index:
            z = pyro.sample("z", dist.Normal(torch.zeros(B, K), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder_loc(z), 0.5).to_event(1), obs=data[index])

    def guide(x, y=None, size=None):
        loc = pyro.param("loc", torch.zeros(N, K))
        with pyro.plate("data", N, subsample_size=B) as index:
            pyro.sample("z", dist.Normal(loc[index], 1.0).to_event(1))

    return model, guide, toy_batch(), None


def scale_pair():
    """poutine.scale on the likelihood (a tempered likelihood) and on the latent in both programs."""

    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            with poutine.scale(scale=0.7):
                z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
            with poutine.scale(scale=0.3):
                pyro.sample("x", dist.Normal(decoder_loc(z), 0.5).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x), poutine.scale(scale=0.7):
            pyro.sample("z", normal_posterior(x).to_event(1))

    return model, guide, toy_batch(), None


def poutine_mask_pair():
    """poutine.mask drops some rows' likelihood."""

    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
            with poutine.mask(mask=x[:, 0] > 0):
                pyro.sample("x", dist.Normal(decoder_loc(z), 0.5).to_event(1), obs=x)

    return model, gaussian_guide, toy_batch(), None


def site_mask_pair():
    """Distribution masks (``fn.mask``) on the latent in both programs and on the likelihood."""

    def model(x, y=None, size=None):
        keep = x[:, 1] > -0.5
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1).mask(keep))
            pyro.sample("x", dist.Normal(decoder_loc(z), 0.5).to_event(1).mask(x[:, 2] < 0.5), obs=x)

    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("z", normal_posterior(x).to_event(1).mask(x[:, 1] > -0.5))

    return model, guide, toy_batch(), None


def obs_mask_pair():
    """obs_mask: rows with a missing observation become a latent site ``x_unobserved`` that the
    guide samples."""

    def model(x, y=None, size=None):
        observed = x[:, 0] > -0.3
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder_loc(z), 0.5).to_event(1), obs=x, obs_mask=observed)

    def guide(x, y=None, size=None):
        fill = pyro.param("fill", torch.zeros(D))
        with pyro.plate("data", size, subsample=x):
            pyro.sample("z", normal_posterior(x).to_event(1))
            with poutine.mask(mask=~(x[:, 0] > -0.3)):
                pyro.sample("x_unobserved", dist.Normal(fill.expand(len(x), D), 1.0).to_event(1))

    return model, guide, toy_batch(), None


def model_factor_pair():
    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
            pyro.factor("penalty", -0.1 * z.pow(2).sum(-1))
            pyro.sample("x", dist.Normal(decoder_loc(z), 0.5).to_event(1), obs=x)

    return model, gaussian_guide, toy_batch(), None


def guide_factor_pair(has_rsample: bool):
    def build():
        def guide(x, y=None, size=None):
            with pyro.plate("data", size, subsample=x):
                z = pyro.sample("z", normal_posterior(x).to_event(1))
                pyro.factor("correction", -0.05 * z.pow(2).sum(-1), has_rsample=has_rsample)

        return gaussian_model, guide, toy_batch(), None

    return build


def nested_plate_pair():
    """The data plate (dim -2) with a feature plate inside: a per-datum latent and a per-feature one."""

    def model(x, y=None, size=None):
        weight = pyro.param("weight", torch.full((D,), 0.5))
        with pyro.plate("data", size, subsample=x, dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 1.0))
            with pyro.plate("features", D, dim=-1):
                u = pyro.sample("u", dist.Normal(z * weight, 1.0))
                pyro.sample("x", dist.Normal(u, 0.5), obs=x)

    def guide(x, y=None, size=None):
        a = pyro.param("a", torch.tensor(0.3))
        s = pyro.param("s", torch.full((D,), 0.8), constraint=constraints.positive)
        with pyro.plate("data", size, subsample=x, dim=-2):
            pyro.sample("z", dist.Normal(a * x.mean(-1, keepdim=True), 0.9))
            with pyro.plate("features", D, dim=-1):
                pyro.sample("u", dist.Normal(0.5 * x, s))

    return model, guide, toy_batch(), None


def global_noise_pair():
    """A learned noise scale: a global LogNormal latent outside the data plate."""

    def model(x, y=None, size=None):
        noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder_loc(z), noise).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        loc = pyro.param("noise_loc", torch.tensor(-0.5))
        scale = pyro.param("noise_scale", torch.tensor(0.2), constraint=constraints.positive)
        pyro.sample("noise", dist.LogNormal(loc, scale))
        gaussian_guide(x, size=size)

    return model, guide, toy_batch(), None


def weight_model(x, y=None, size=None):
    """A decoder weight as a global latent outside the data plate."""
    weight = pyro.sample("weight", dist.Normal(torch.zeros(K, D), 1.0).to_event(2))
    with pyro.plate("data", size, subsample=x):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ weight, 0.5).to_event(1), obs=x)


def bayesian_weight_pair():
    """A Bayesian decoder weight: a global Normal matrix latent outside the data plate."""

    def guide(x, y=None, size=None):
        loc = pyro.param("weight_loc", torch.full((K, D), 0.1))
        scale = pyro.param("weight_scale", torch.full((K, D), 0.3), constraint=constraints.positive)
        pyro.sample("weight", dist.Normal(loc, scale).to_event(2))
        gaussian_guide(x, size=size)

    return weight_model, guide, toy_batch(), None


def delta_guide_pair():
    """Delta (MAP) guides for a global weight and the local codes."""

    def guide(x, y=None, size=None):
        pyro.sample("weight", dist.Delta(pyro.param("weight_map", torch.full((K, D), 0.2)), event_dim=2))
        with pyro.plate("data", size, subsample=x):
            pyro.sample("z", dist.Delta(encoder("enc", K)(x), event_dim=1))

    return weight_model, guide, toy_batch(), None


def flow_guide_pair(kind: str):
    """q(z | x): an amortized Normal pushed through a learned flow (registered with pyro.module)."""

    def build():
        torch.manual_seed(4)
        if kind == "spline":
            flow = T.spline(K, count_bins=4)
        else:
            flow = T.affine_autoregressive(K, hidden_dims=[6])

        def guide(x, y=None, size=None):
            pyro.module("flow", flow)
            with pyro.plate("data", size, subsample=x):
                base = normal_posterior(x).to_event(1)
                pyro.sample("z", dist.TransformedDistribution(base, [flow]))

        return gaussian_model, guide, toy_batch(), None

    return build


def constrained_pair(family: str):
    """A positive, unit-interval or simplex local latent with a reparameterized sampler."""

    def prior(rows):
        if family == "LogNormal":
            return dist.LogNormal(torch.zeros(rows, K), 1.0).to_event(1)
        if family == "Gamma":
            return dist.Gamma(torch.full((rows, K), 2.0), 2.0).to_event(1)
        if family == "Beta":
            return dist.Beta(torch.full((rows, K), 2.0), 2.0).to_event(1)
        return dist.Dirichlet(torch.ones(rows, K))

    def posterior(x):
        a, b = (softplus(h) + 0.5 for h in encoder("enc")(x).split(K, -1))
        if family == "LogNormal":
            return dist.LogNormal(a.log(), b).to_event(1)
        if family == "Gamma":
            return dist.Gamma(a, b).to_event(1)
        if family == "Beta":
            return dist.Beta(a, b).to_event(1)
        return dist.Dirichlet(a)

    def build():
        def model(x, y=None, size=None):
            with pyro.plate("data", size, subsample=x):
                z = pyro.sample("z", prior(len(x)))
                pyro.sample("x", dist.Normal(decoder_loc(z), 0.5).to_event(1), obs=x)

        def guide(x, y=None, size=None):
            with pyro.plate("data", size, subsample=x):
                pyro.sample("z", posterior(x))

        return model, guide, toy_batch(), None

    return build


def discrete_model(x, y=None, size=None):
    with pyro.plate("data", size, subsample=x):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
        c = pyro.sample("c", dist.Categorical(logits=torch.zeros(len(x), 3)))
        shift = pyro.param("shift", torch.tensor([-1.0, 0.0, 1.0]))[c]
        pyro.sample("x", dist.Normal(decoder_loc(z) + shift[:, None], 0.5).to_event(1), obs=x)


def discrete_guide(x, y=None, size=None, enumerate_=None):
    infer = {"enumerate": enumerate_} if enumerate_ else {}
    with pyro.plate("data", size, subsample=x):
        pyro.sample("c", dist.Categorical(logits=encoder("classifier", 3)(x)), infer=infer)
        pyro.sample("z", normal_posterior(x).to_event(1))


def categorical_pair():
    return discrete_model, discrete_guide, toy_batch(), None


def bernoulli_pair():
    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
            b = pyro.sample("b", dist.Bernoulli(0.3).expand([len(x)]))
            pyro.sample("x", dist.Normal(decoder_loc(z) + b[:, None], 0.5).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        probs = pyro.param("probs", torch.tensor(0.5), constraint=constraints.unit_interval)
        with pyro.plate("data", size, subsample=x):
            pyro.sample("b", dist.Bernoulli(probs).expand([len(x)]))
            pyro.sample("z", normal_posterior(x).to_event(1))

    return model, guide, toy_batch(), None


def enumerated_guide_pair():
    return discrete_model, config_enumerate(discrete_guide), toy_batch(), None


def model_side_enumeration_pair():
    """The model sums out its discrete site; the guide does not sample it."""

    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(3)), infer={"enumerate": "parallel"})
            shift = pyro.param("shift", torch.tensor([-1.0, 0.0, 1.0]))[c]
            pyro.sample("x", dist.Normal(decoder_loc(z) + shift[..., None], 0.5).to_event(1), obs=x)

    return model, gaussian_guide, toy_batch(), None


def sized_by_batch_pair():
    """``model(x)`` with ``pyro.plate("data", x.shape[0])``: no size parameter, scaled by bind."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder_loc(z), 0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", normal_posterior(x).to_event(1))

    return model, guide, toy_batch(), None


def unsized_plate_pair():
    """``pyro.plate("data")`` without a size: the plate takes its size from the sites."""

    def model(x):
        with pyro.plate("data"):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder_loc(z), 0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data"):
            pyro.sample("z", normal_posterior(x).to_event(1))

    return model, guide, toy_batch(), None


def positional_labels_pair():
    """``model(xs, ys=None)``: labels taken positionally, as in Pyro's examples."""

    def model(xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(xs), K), 1.0).to_event(1))
            logits = pyro.param("label_logits", torch.zeros(3))
            pyro.sample("y", dist.Categorical(logits=logits).expand([len(xs)]), obs=ys)
            shift = pyro.param("class_shift", torch.tensor([-1.0, 0.0, 1.0]))[ys]
            pyro.sample("x", dist.Normal(decoder_loc(z) + shift[:, None], 0.5).to_event(1), obs=xs)

    def guide(xs, ys=None):
        with pyro.plate("data", xs.shape[0]):
            loc, raw = encoder("enc", 2 * K, D + 3)(torch.cat([xs, nn.functional.one_hot(ys, 3)], -1)).split(K, -1)
            pyro.sample("z", dist.Normal(loc, softplus(raw) + 0.1).to_event(1))

    return model, guide, toy_batch(), labels()


def conditional_pair(missing: bool):
    """The stock semi-supervised pair: labelled rows only, or with missing labels (-1), which the
    guide enumerates."""

    def build():
        torch.manual_seed(6)
        model = ConditionalVAE.build((1, 8, 8), 3, 2, [16], "mlp", "bernoulli")
        guide = ConditionalNormal.build((1, 8, 8), 3, 2, [16], "mlp")
        y = labels()
        if missing:
            y[::3] = -1
        return model, guide, binary_batch(), y

    return build


def model_latent_missing_from_guide_pair():
    """A model latent the guide does not sample: Trace_ELBO draws it from the prior and warns."""

    def model(x, y=None, size=None):
        offset = pyro.sample("offset", dist.Normal(0.0, 1.0))
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), K), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder_loc(z) + offset, 0.5).to_event(1), obs=x)

    return model, gaussian_guide, toy_batch(), None


def auxiliary_pair(reparameterized: bool):
    """An auxiliary guide site (a hierarchical q): reparameterized or a Bernoulli."""

    def build():
        def guide(x, y=None, size=None):
            with pyro.plate("data", size, subsample=x):
                if reparameterized:
                    u = pyro.sample(
                        "u", dist.Normal(torch.zeros(len(x), 1), 1.0).to_event(1), infer={"is_auxiliary": True}
                    )
                else:
                    u = pyro.sample(
                        "u", dist.Bernoulli(0.5).expand([len(x), 1]).to_event(1), infer={"is_auxiliary": True}
                    )
                posterior = normal_posterior(x)
                pyro.sample("z", dist.Normal(posterior.loc + 0.3 * u, posterior.scale).to_event(1))

        return gaussian_model, guide, toy_batch(), None

    return build


@dataclass(frozen=True)
class Pair:
    build: Callable
    estimator: str  # what FastSVI must say it uses
    num_particles: int = 1
    vectorize_particles: bool = False
    beta: float | None = None  # a β-weighted pair, wrapped as fit wraps it
    warns: str | None = None  # a warning both estimators must give


PAIRS = {
    "stock": Pair(stock_pair, "FastSVI"),
    "stock-beta": Pair(stock_pair, "FastSVI", beta=0.25),
    "stock-3-particles": Pair(stock_pair, "FastSVI", num_particles=3),
    "stock-delta-guide": Pair(stock_delta_pair, "FastSVI"),
    "auto-amortized-guide": Pair(auto_guide_pair, "FastSVI"),
    "pyro.param": Pair(param_pair, "FastSVI"),
    "pyro.param-3-particles-beta": Pair(param_pair, "FastSVI", num_particles=3, beta=2.0),
    "subsample_size": Pair(subsample_size_pair, "FastSVI"),
    "poutine.scale": Pair(scale_pair, "FastSVI"),
    "poutine.mask": Pair(poutine_mask_pair, "FastSVI"),
    "site-masks": Pair(site_mask_pair, "FastSVI"),
    "obs_mask": Pair(obs_mask_pair, "FastSVI"),
    "model-factor": Pair(model_factor_pair, "FastSVI"),
    "guide-factor-rsample": Pair(guide_factor_pair(True), "FastSVI"),
    "guide-factor-no-rsample": Pair(guide_factor_pair(False), "Trace_ELBO"),
    "nested-plates": Pair(nested_plate_pair, "FastSVI"),
    "global-noise-scale": Pair(global_noise_pair, "FastSVI"),
    "bayesian-weight": Pair(bayesian_weight_pair, "FastSVI"),
    "delta-guides": Pair(delta_guide_pair, "FastSVI"),
    "spline-flow-guide": Pair(flow_guide_pair("spline"), "FastSVI"),
    "autoregressive-flow-guide": Pair(flow_guide_pair("autoregressive"), "FastSVI"),
    "lognormal-latent": Pair(constrained_pair("LogNormal"), "FastSVI"),
    "gamma-latent": Pair(constrained_pair("Gamma"), "FastSVI"),
    "beta-latent": Pair(constrained_pair("Beta"), "FastSVI"),
    "dirichlet-latent": Pair(constrained_pair("Dirichlet"), "FastSVI"),
    "reparameterized-auxiliary": Pair(auxiliary_pair(True), "FastSVI"),
    "no-size-plate-of-batch": Pair(sized_by_batch_pair, "FastSVI"),
    "no-size-unsized-plate": Pair(unsized_plate_pair, "FastSVI"),
    "positional-labels": Pair(positional_labels_pair, "FastSVI"),
    "conditional-labelled": Pair(conditional_pair(False), "FastSVI"),
    "bernoulli-guide": Pair(bernoulli_pair, "Trace_ELBO"),
    "categorical-guide": Pair(categorical_pair, "Trace_ELBO"),
    "bernoulli-auxiliary": Pair(auxiliary_pair(False), "Trace_ELBO"),
    "model-latent-not-in-guide": Pair(model_latent_missing_from_guide_pair, "Trace_ELBO", warns="not guide"),
    "vectorized-particles": Pair(param_pair, "Trace_ELBO", num_particles=3, vectorize_particles=True),
    "enumerated-guide": Pair(enumerated_guide_pair, "TraceEnum_ELBO"),
    "model-side-enumeration": Pair(model_side_enumeration_pair, "TraceEnum_ELBO"),
    "conditional-missing-labels": Pair(conditional_pair(True), "TraceEnum_ELBO"),
}


@dataclass
class Steps:
    estimator_at_construction: str
    estimator: str
    fast_loss: float
    fast_grads: dict[str, torch.Tensor]
    pyro_loss: float
    pyro_grads: dict[str, torch.Tensor]
    fast_warnings: list[str]
    pyro_warnings: list[str]


def _recorded(step: Callable) -> tuple[float, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = step()
    clear_gradients()
    return loss, [str(warning.message) for warning in caught]


def one_step_each(pair: Pair, seed: int) -> Steps:
    """One FastSVI step as fit builds it and one SVI step with the ELBO it names, from the same
    parameters and the same random state."""
    fresh_state()
    model, guide, x, y = pair.build()
    inspection = inspect_pair(model, guide, x, y, size=N, convention=None)
    assert len(x) < N
    model, guide = inspection.model, inspection.guide
    if pair.beta is not None:
        handler = KLWeightMessenger(pair.beta)
        model, guide = kl_weighted(model, handler), kl_weighted(guide, handler)
    options = {"num_particles": pair.num_particles, "vectorize_particles": pair.vectorize_particles}
    fast_optim = RecordingOptim()
    fast = FastSVI(
        model, guide, fast_optim, max_plate_nesting=inspection.plate_nesting,
        traces=(inspection.model_trace, inspection.guide_trace), **options,
    )  # fmt: skip
    at_construction = fast.estimator
    pyro.set_rng_seed(seed)
    fast_loss, fast_warnings = _recorded(lambda: fast.step(x, y, size=N))

    elbo = ELBOS[fast.estimator](max_plate_nesting=inspection.plate_nesting, **options)
    pyro_optim = RecordingOptim()
    pyro.set_rng_seed(seed)
    pyro_loss, pyro_warnings = _recorded(lambda: SVI(model, guide, pyro_optim, elbo).step(x, y, size=N))
    assert len(fast_optim.calls) == len(pyro_optim.calls) == 1
    return Steps(
        at_construction, fast.estimator, fast_loss, fast_optim.calls[0], pyro_loss, pyro_optim.calls[0],
        fast_warnings, pyro_warnings,
    )  # fmt: skip


def test_the_suite_covers_enough_pairs():
    assert len(PAIRS) >= 30
    assert {pair.estimator for pair in PAIRS.values()} == {"FastSVI", "Trace_ELBO", "TraceEnum_ELBO"}


@pytest.mark.parametrize("name", list(PAIRS))
def test_one_step_equals_pyros_svi_to_the_bit(name):
    pair = PAIRS[name]
    steps = one_step_each(pair, seed=11)

    # the estimator is decided on the inspection's traces, before any step, and is the expected one
    assert steps.estimator_at_construction == steps.estimator == pair.estimator
    assert isinstance(steps.fast_loss, float) and isinstance(steps.pyro_loss, float)
    assert steps.fast_loss == steps.pyro_loss
    assert steps.fast_grads.keys() == steps.pyro_grads.keys()
    assert steps.fast_grads, "no parameter received a gradient"
    for parameter, gradient in steps.pyro_grads.items():
        assert torch.equal(steps.fast_grads[parameter], gradient), parameter
    assert any(gradient.abs().sum() > 0 for gradient in steps.fast_grads.values())
    for caught in (steps.fast_warnings, steps.pyro_warnings):
        if pair.warns is None:
            assert caught == []
        else:
            assert any(pair.warns in message for message in caught), caught


@pytest.mark.parametrize("name", ["stock", "subsample_size", "lognormal-latent", "bernoulli-guide", "enumerated-guide"])
def test_other_draws_give_other_losses_and_gradients(name):
    """The equality above is not vacuous: the step depends on the draws (and, with
    ``subsample_size``, on the indices the plate draws)."""
    first, second = one_step_each(PAIRS[name], seed=11), one_step_each(PAIRS[name], seed=12)
    assert first.fast_loss != second.fast_loss
    assert first.fast_grads.keys() == second.fast_grads.keys()
    assert any(not torch.equal(first.fast_grads[p], second.fast_grads[p]) for p in first.fast_grads)


def test_a_site_first_met_in_a_later_particle_leaves_no_gradient_behind():
    """When a later particle meets a site FastSVI does not serve, the earlier particles have
    already been differentiated; the fallback's step must start from no gradient, or it would
    step with those particles' gradients added to its own."""
    fresh_state()
    calls = []

    def model(x, y=None, size=None):
        calls.append(1)
        shift = pyro.param("shift", torch.tensor(0.5))
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0))
            if len(calls) > 1:  # from the second particle on
                z = z + pyro.sample("extra", dist.Delta(shift.expand(len(x))))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("z", dist.Delta(pyro.param("loc", torch.tensor(0.1)) + x))  # no draws: steps compare

    x = toy_batch()[:, 0]
    fast_optim, pyro_optim = RecordingOptim(), RecordingOptim()
    fast = FastSVI(model, guide, fast_optim, num_particles=2)
    with pytest.warns(UserWarning, match="not guide"):
        fast.step(x, size=N)
    assert fast.estimator == "Trace_ELBO" and "'extra'" in fast.fallback_reason
    clear_gradients()
    with pytest.warns(UserWarning, match="not guide"):
        SVI(model, guide, pyro_optim, Trace_ELBO(num_particles=2)).step(x, size=N)
    assert fast_optim.calls[0].keys() == pyro_optim.calls[0].keys() == {"loc", "shift"}
    for name, gradient in pyro_optim.calls[0].items():
        assert torch.equal(fast_optim.calls[0][name], gradient), name


# ---------------------------------------------------------------------------------------------
# Pyro's errors and warnings, through fit (after Pyro's tests/infer/test_valid_models.py)


def fit_quietly(model, guide, data, **options):
    return pyro_vae.fit(model, guide, data, epochs=1, batch_size=8, validation=None, progress=False, **options)


def event_dim_mismatch():
    """A global guide site with a batch dimension outside any plate where the model has an event
    dimension (test_model_guide_dim_mismatch_error)."""

    def model(x, y=None, size=None):
        weight = pyro.sample("weight", dist.Normal(torch.zeros(D), 1.0).to_event(1))
        with pyro.plate("data", size, subsample=x):
            pyro.sample("x", dist.Normal(weight, 1.0).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        pyro.sample("weight", dist.Normal(pyro.param("loc", torch.zeros(D)), 1.0))

    return model, guide, "Model and guide event_dims disagree at site 'weight'"


def batch_shape_mismatch():
    """The same global site with another batch shape in the guide (test_model_guide_shape_mismatch_error)."""

    def model(x, y=None, size=None):
        weight = pyro.sample("weight", dist.Normal(torch.zeros(1, D), 1.0).to_event(1))
        with pyro.plate("data", size, subsample=x):
            pyro.sample("x", dist.Normal(weight.sum(), 1.0).expand([len(x), D]).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        pyro.sample("weight", dist.Normal(pyro.param("loc", torch.zeros(D, 1)), 1.0).to_event(1))

    return model, guide, "Model and guide shapes disagree at site 'weight'"


def shape_mismatch_in_plate():
    """A local site whose batch shape does not fit the data plate (test_plate_broadcast_error)."""

    def model(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(K), 1.0))
            pyro.sample("x", dist.Normal(z.sum(), 1.0).expand([len(x), D]).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            pyro.sample("z", dist.Normal(pyro.param("loc", torch.zeros(K)), 1.0))

    return model, guide, r"Shape mismatch inside plate\('data'\) at site z dim -1"


def guide_factor_without_has_rsample():
    def guide(x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", normal_posterior(x).to_event(1))
            pyro.factor("correction", -z.pow(2).sum(-1))

    return gaussian_model, guide, r'At guide site pyro.factor\("correction",...\), missing specification of has_rsample'


@pytest.mark.parametrize(
    "program", [event_dim_mismatch, batch_shape_mismatch, shape_mismatch_in_plate, guide_factor_without_has_rsample]
)
def test_fit_raises_pyros_error_for_an_invalid_pair(program):
    fresh_state()
    model, guide, message = program()
    with pytest.raises(ValueError, match=message):
        fit_quietly(model, guide, toy_batch(32))


def test_fit_warns_as_trace_elbo_for_a_model_latent_the_guide_lacks_and_still_trains():
    fresh_state()
    model, guide, *_ = model_latent_missing_from_guide_pair()
    data = toy_batch(32)
    inspect_pair(model, guide, data[:8])  # create the parameters to compare with
    before = pyro.param("decoder").detach().clone()
    with pytest.warns(UserWarning, match="Found vars in model but not guide: {'offset'}"):
        history = fit_quietly(model, guide, data, seed=0)
    assert history.estimator == "Trace_ELBO"
    assert all(torch.isfinite(torch.tensor(history.train_elbo)))
    assert not torch.equal(pyro.param("decoder").detach(), before)


# ---------------------------------------------------------------------------------------------
# A semi-supervised pair whose enumerated site appears only after the first batch


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites configured for enumeration")
def test_labels_missing_after_the_first_batch_switch_to_trace_enum_before_any_gradient(monkeypatch):
    """The first batch (the inspection's) and the first step's are wholly labelled, so FastSVI
    serves them; the guide's enumerated ``y_unobserved`` appears with the first batch that has a
    missing label, and that step's gradient must already be TraceEnum_ELBO's (one optimizer call
    per step, none from FastSVI on a batch with a missing label)."""
    fresh_state()
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(48, 1, 8, 8, generator=generator) > 0.5).float()
    y = torch.randint(3, (48,), generator=generator)
    y[-2:] = -1  # 2 of 6 batches of 8 have a missing label; the inspection's batch (rows 0-7) has none
    torch.manual_seed(0)
    model = ConditionalVAE.build((1, 8, 8), 3, 2, [16], "mlp", "bernoulli")
    guide = ConditionalNormal.build((1, 8, 8), 3, 2, [16], "mlp")

    steppers, batches, calls = [], [], []
    make_svi, fast_step, optim_call = pyro_vae.training._make_svi, FastSVI.step, pyro_vae.optim.JointOptim.__call__

    def spy_make_svi(*args):
        steppers.append(make_svi(*args))
        return steppers[-1]

    def spy_step(self, x, y=None, **kwargs):
        batches.append(y is not None and bool((y == -1).any()))
        return fast_step(self, x, y, **kwargs)

    def spy_optim(self, params, *args, **kwargs):
        names = {pyro.get_param_store()._param_to_name.get(p) for p in params if p.grad is not None}
        calls.append((steppers[-1].estimator, names))
        return optim_call(self, params, *args, **kwargs)

    monkeypatch.setattr(pyro_vae.training, "_make_svi", spy_make_svi)
    monkeypatch.setattr(FastSVI, "step", spy_step)
    monkeypatch.setattr(pyro_vae.optim.JointOptim, "__call__", spy_optim)
    history = pyro_vae.fit(model, guide, (x, y), epochs=2, batch_size=8, validation=None, progress=False, seed=3)

    assert history.estimator == "TraceEnum_ELBO"
    assert len(calls) == len(batches) == 12  # every step stepped the optimizer once
    assert not batches[0] and calls[0][0] == "FastSVI"  # the test's premise: FastSVI served the first step
    switch = batches.index(True)
    assert [estimator for estimator, _ in calls] == ["FastSVI"] * switch + ["TraceEnum_ELBO"] * (12 - switch)
    classifier = {name for name in calls[switch][1] if name.startswith("classifier")}
    assert classifier, "the switching step's gradient has no term of the enumerated q(y | x)"
