"""The captured training step: recorded once per signature, replayed bit for bit like the eager step."""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyro_vae
from pyro_vae.captured_step import CapturedSteps, signature
from pyro_vae.fast_svi import FastSVI
from pyro_vae.guides import AmortizedNormal
from pyro_vae.kl_weight import KLWeightMessenger, kl_weighted
from pyro_vae.models import VAE
from pyro_vae.optim import make_optimizer
from tests.conftest import DEVICES


@pytest.fixture
def replays(monkeypatch) -> list[int]:
    """Counts the replayed steps of every CapturedSteps."""
    counted = []
    original = CapturedSteps._replay

    def counting(self, *args, **kwargs):
        counted.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CapturedSteps, "_replay", counting)
    return counted


def trained(digits, device: str = "cpu", **options):
    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    model = VAE.build((1, 8, 8), 4, (32,), "mlp", "continuous-bernoulli")
    guide = AmortizedNormal.build((1, 8, 8), 4, (32,), "mlp")
    settings = {"epochs": 3, "batch_size": 100, "warmup_epochs": 2.0, "seed": 0, "progress": False} | options
    history = pyro_vae.fit(model, guide, digits.train_x, device=device, **settings)
    return history, {**model.state_dict(), **{f"guide.{k}": v for k, v in guide.state_dict().items()}}


@pytest.mark.parametrize("device", DEVICES)
def test_fit_with_the_captured_step_equals_the_eager_run_bit_for_bit(digits, replays, device):
    eager, eager_state = trained(digits, device)
    assert not replays
    captured, captured_state = trained(digits, device, capture=True)
    # the KL weight rises every step, the last minibatch of an epoch is shorter (a second
    # signature): replays after the first two steps of each signature
    steps_per_epoch = -(-int(len(digits.train_x) * 0.9) // 100)
    assert len(replays) == 3 * steps_per_epoch - 4
    assert captured.train_elbo == eager.train_elbo and captured.val_elbo == eager.val_elbo
    assert captured.kl_weight == eager.kl_weight and captured.kl_weight[0] < captured.kl_weight[-1]
    for name, value in eager_state.items():
        assert torch.equal(value, captured_state[name]), name


def stepper(capture: bool):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = VAE.build((12,), 3, (16,), "mlp", "gaussian")
    guide = AmortizedNormal.build((12,), 3, (16,), "mlp")
    handler = KLWeightMessenger(0.0)
    optim = make_optimizer("adam", 1e-2, None)
    svi = FastSVI(kl_weighted(model, handler), kl_weighted(guide, handler), optim, capture=capture, kl_weight=handler)
    return svi, handler, optim


def test_learning_rate_kl_weight_and_a_restarted_optimizer_state_are_live_inputs(replays):
    """Each changes between replays; a rollback (optim.restart) replaces the moment tensors."""
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(1))
    runs = []
    for capture in (False, True):
        svi, handler, optim = stepper(capture)
        losses, saved = [], None
        for step in range(12):
            handler.weight, optim.lr = step / 11, 1e-2 * (1 + step % 3)
            if step == 4:
                saved = copy.deepcopy(optim.get_state())
            if step == 8:
                optim.restart(copy.deepcopy(saved))
            losses.append(svi.step(x[(step % 2) * 20 : (step % 2 + 1) * 20], size=40))
        runs.append((losses, {name: value.detach().clone() for name, value in pyro.get_param_store().items()}))
    assert len(replays) == 10
    (eager, eager_parameters), (captured, captured_parameters) = runs
    assert captured == eager
    assert all(torch.equal(eager_parameters[name], captured_parameters[name]) for name in eager_parameters)


def test_a_rollback_to_before_the_first_step_steps_eagerly_then_replays_again(replays):
    """optim.restart({}) drops every optimizer state: the next step makes them afresh, eagerly."""
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(2))
    runs = []
    for capture in (False, True):
        svi, _, optim = stepper(capture)
        losses = []
        for step in range(10):
            if step == 5:
                optim.restart({})
            losses.append(svi.step(x, size=20))
        runs.append((losses, {name: value.detach().clone() for name, value in pyro.get_param_store().items()}))
    assert len(replays) == 10 - 2 - 1  # eager, recorded, ..., the step after the restart eager
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(value, runs[1][1][name]) for name, value in runs[0][1].items())


def test_the_signature_tells_memory_layouts_apart():
    rows, transposed = torch.zeros(3, 4), torch.zeros(4, 3).t()
    assert signature((rows,), {"size": 3}) != signature((transposed,), {"size": 3})
    assert signature((rows,), {"size": 3}) == signature((rows.clone(),), {"size": 3})
    assert signature((rows,), {"size": 3}) != signature((rows,), {"size": 4})


class ReadsItsData(nn.Module):
    """A model whose operations depend on a value of its data: a recording would freeze the branch."""

    def __init__(self, branch: bool) -> None:
        super().__init__()
        self.branch = branch
        self.decoder = nn.Linear(2, 3)
        self.encoder = nn.Linear(3, 4)

    def model(self, x, y=None, size=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            if self.branch:
                loc = self.decoder(z) if x.sum() > 0 else -self.decoder(z)
            else:  # an output shape that depends on values: a replay would keep the recorded one
                loc = self.decoder(z) * x[x > 0].sum()
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x, y=None, size=None):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", size, subsample=x):
            loc, log_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


@pytest.mark.parametrize("branch", [True, False], ids=["branch-on-a-value", "value-dependent-shape"])
def test_a_program_that_reads_a_tensor_value_keeps_stepping_eagerly(replays, branch):
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    x[30:] = -x[30:].abs()  # batches of either sign
    results = []
    for capture in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        owner = ReadsItsData(branch)
        history = pyro_vae.fit(owner.model, owner.guide, x, epochs=4, batch_size=10, capture=capture, seed=1)
        results.append((history.train_elbo, copy.deepcopy(owner.state_dict())))
    assert not replays  # every recording read a value and was discarded
    assert results[0][0] == results[1][0]
    assert all(torch.equal(value, results[1][1][name]) for name, value in results[0][1].items())


@pytest.mark.parametrize(
    "options,reason",
    [
        ({"clip_norm": 1.0}, "gradients are clipped"),
        ({"loss": "iwae", "num_particles": 2}, "loss='iwae' trains with Pyro's SVI"),
        ({"num_particles": 2}, "more than one particle per step"),
        ({"optimizer": "clipped-adam"}, "the optimizer is not the fused Adam"),
    ],
)
def test_a_step_that_cannot_be_captured_runs_eagerly_and_says_why(digits, replays, options, reason):
    with pytest.warns(UserWarning, match=f"capture=True: the training step runs eagerly, because {reason}"):
        trained(digits, epochs=1, capture=True, **options)
    assert not replays
