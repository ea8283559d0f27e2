"""pyro_vae.fit: it trains stock and user-written pairs, scales minibatches right, is
reproducible, and its options (β, warm-up, losses, early stopping) do what they say."""

from __future__ import annotations

import copy
import math
import re
from itertools import pairwise

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.nn import PyroModule
from torch import nn
from torch.utils.data import TensorDataset

import pyro_vae
from pyro_vae.guides import AmortizedNormal
from pyro_vae.kl_weight import KLWeightMessenger, kl_weighted
from pyro_vae.likelihoods import get_likelihood
from pyro_vae.models import VAE
from tests.conftest import DEVICES

LATENT = 10
HIDDEN = (256, 128)
# A working VAE reaches a held-out ELBO of about 75-77 nats per digit after 30 epochs (seeds 0, 1);
# a decoder that ignores z can only learn the pixel marginals and stays near 6.
TRAINED_DIGITS_ELBO = 60.0


class IgnoresZ(nn.Module):
    """A broken decoder: the same logits for every z."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(1, 1, 8, 8))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*z.shape[:-1], 1, 1, 8, 8)


def stock_pair(x_shape=(1, 8, 8), likelihood="continuous-bernoulli"):
    return (
        VAE.build(x_shape, LATENT, HIDDEN, "mlp", likelihood),
        AmortizedNormal.build(x_shape, LATENT, HIDDEN, "mlp"),
    )


@pytest.mark.parametrize("decoder", ["stock", "ignores-z"])
def test_thirty_epochs_raise_the_held_out_elbo(digits, decoder):
    model, guide = stock_pair()
    if decoder == "ignores-z":
        model = VAE(IgnoresZ(), get_likelihood("continuous-bernoulli", 3), LATENT)
    before = pyro_vae.elbo(model, guide, digits.test_x, num_samples=10).mean().item()
    pyro_vae.fit(model, guide, digits.train_x, epochs=30, validation=None, progress=False)
    after = pyro_vae.elbo(model, guide, digits.test_x, num_samples=10).mean().item()
    assert before < 5.0
    if decoder == "stock":
        assert after > TRAINED_DIGITS_ELBO
    else:
        assert after < TRAINED_DIGITS_ELBO / 2, "the threshold must be out of reach of a broken decoder"


def test_same_seed_same_result_and_another_seed_differs(digits):
    def train(seed):
        pyro.set_rng_seed(seed)  # the networks' initial weights are the user's to seed
        model, guide = stock_pair()
        history = pyro_vae.fit(model, guide, digits.train_x[:400], epochs=3, seed=seed, progress=False)
        return history, [p.detach().clone() for p in [*model.parameters(), *guide.parameters()]]

    (history_a, params_a), (history_b, params_b) = train(3), train(3)
    assert history_a.train_elbo == history_b.train_elbo
    assert history_a.val_elbo == history_b.val_elbo
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))
    # the same run from an empty parameter store (set-up then evicts nothing, and draws less)
    pyro.clear_param_store()
    history_d, params_d = train(3)
    assert history_d.train_elbo == history_a.train_elbo
    assert all(torch.equal(a, d) for a, d in zip(params_a, params_d, strict=True))
    history_c, params_c = train(4)
    assert history_c.train_elbo != history_a.train_elbo
    assert not all(torch.equal(a, c) for a, c in zip(params_a, params_c, strict=True))


def test_per_datum_training_elbo_matches_the_validation_elbo(digits):
    """Each step's loss is scaled by the plate to the whole training set; divided by N it must
    be on the scale of the per-datum validation ELBO, whatever the batch size."""
    for batch_size in (16, 256):
        model, guide = stock_pair()
        history = pyro_vae.fit(model, guide, digits.train_x, epochs=10, batch_size=batch_size, progress=False)
        assert abs(history.train_elbo[-1] - history.val_elbo[-1]) < 5.0, batch_size
        assert history.val_elbo[-1] > 20.0


class LaplaceModel(PyroModule):
    """A user's model: two stochastic layers and a Laplace likelihood, written in plain Pyro."""

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.top_to_bottom = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 8))
        self.bottom_to_x = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, data_dim))
        self.log_scale = nn.Parameter(torch.zeros(data_dim))

    def forward(self, x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            top = pyro.sample("top", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            loc, log_scale = self.top_to_bottom(top).chunk(2, dim=-1)
            bottom = pyro.sample("bottom", dist.Normal(loc, log_scale.exp()).to_event(1))
            pyro.sample("x", dist.Laplace(self.bottom_to_x(bottom), self.log_scale.exp()).to_event(1), obs=x)


class LaplaceGuide(PyroModule):
    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.x_to_bottom = nn.Sequential(nn.Linear(data_dim, 32), nn.Tanh(), nn.Linear(32, 8))
        self.bottom_to_top = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))

    def forward(self, x, y=None, size=None):
        with pyro.plate("data", size, subsample=x):
            loc, raw = self.x_to_bottom(x).chunk(2, dim=-1)
            bottom = pyro.sample("bottom", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
            loc, raw = self.bottom_to_top(bottom).chunk(2, dim=-1)
            pyro.sample("top", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def test_user_written_hierarchical_laplace_model_trains_and_scores():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1000, 2, generator=generator)
    x = torch.cat([z, z.sin(), z[:, :1] * z[:, 1:]], dim=-1) + 0.05 * torch.randn(1000, 5, generator=generator)
    model, guide = LaplaceModel(5), LaplaceGuide(5)
    before = pyro_vae.elbo(model, guide, x[:200], num_samples=10).mean().item()
    history = pyro_vae.fit(model, guide, x, epochs=60, batch_size=100, lr=1e-2, progress=False)
    elbo = pyro_vae.elbo(model, guide, x[:200], num_samples=10)
    log_px = pyro_vae.log_likelihood(model, guide, x[:200], num_samples=200)
    assert elbo.shape == log_px.shape == (200,)
    assert elbo.mean().item() > before + 5.0
    assert history.val_elbo[-1] > history.val_elbo[0]
    assert log_px.mean() >= elbo.mean()


def test_plain_function_model_with_pyro_module_trains():
    decoder, encoder = nn.Linear(2, 4), nn.Linear(4, 4)

    def model(x, y=None, size=None):
        pyro.module("decoder", decoder)
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 0.1).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", size, subsample=x):
            loc, raw = encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw)).to_event(1))

    x = torch.randn(500, 2) @ torch.tensor([[1.0, 0.5, 0.0, -1.0], [0.0, 1.0, 2.0, 0.5]])
    before = [p.detach().clone() for p in [*decoder.parameters(), *encoder.parameters()]]
    history = pyro_vae.fit(model, guide, x, epochs=30, lr=1e-2, progress=False)
    after = [*decoder.parameters(), *encoder.parameters()]
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    assert history.val_elbo[-1] > history.val_elbo[0] + 10.0


@pytest.mark.parametrize("form", ["tensor", "pair", "dataset", "dataset-without-labels"])
def test_data_forms_and_labels_reach_the_model(form):
    seen_labels = []

    class LabelledVAE(VAE):
        def forward(self, x=None, y=None, size=None):
            seen_labels.append(y)
            return super().forward(x, y, size)

    x, y = (torch.rand(200, 6) > 0.5).float(), torch.arange(200) % 3
    data = {
        "tensor": x,
        "pair": (x, y),
        "dataset": TensorDataset(x, y),
        "dataset-without-labels": TensorDataset(x),
    }[form]
    model = LabelledVAE.build((6,), 2, (16,), "mlp", "bernoulli")
    guide = AmortizedNormal.build((6,), 2, (16,))
    history = pyro_vae.fit(model, guide, data, epochs=2, batch_size=50, progress=False)
    assert len(history.epoch) == 2
    labels = [labels for labels in seen_labels if labels is not None]
    if form in ("tensor", "dataset-without-labels"):
        assert not labels
    else:
        assert labels and all(len(labels) <= 50 and labels.max() <= 2 for labels in labels)


def test_beta_scales_the_kl_term_in_model_and_guide():
    model, guide = stock_pair((6,), "bernoulli")
    x = (torch.rand(20, 6) > 0.5).float()
    beta = 3.0
    handler = KLWeightMessenger(beta)
    pyro.set_rng_seed(5)
    loss = Trace_ELBO().loss(kl_weighted(model, handler), kl_weighted(guide, handler), x, size=20)
    pyro.set_rng_seed(5)
    guide_trace = poutine.trace(guide).get_trace(x, size=20)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, size=20)
    log_px_z = model_trace.nodes["x"]["fn"].log_prob(x).sum()
    log_pz = model_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"]).sum()
    log_qz = guide_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"]).sum()
    expected = -(log_px_z + beta * (log_pz - log_qz))
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def test_warmup_raises_beta_linearly(digits):
    model, guide = stock_pair()
    history = pyro_vae.fit(
        model, guide, digits.train_x[:256], epochs=6, batch_size=64, beta=2.0, warmup_epochs=4, progress=False
    )
    weights = history.kl_weight
    assert all(a < b for a, b in pairwise(weights[:5]))
    assert weights[0] == pytest.approx(2.0 * (0 + 3 / 4) / 4)  # last of 4 steps in epoch 1
    assert weights[4:] == [2.0, 2.0]


@pytest.mark.parametrize("loss,particles,vectorize", [("meanfield", 1, False), ("trace", 4, True), ("jit", 1, False)])
def test_other_losses_train(digits, monkeypatch, loss, particles, vectorize):
    """The requested ELBO class is used, with the requested particles, and it trains."""
    used = []
    elbo_class = pyro_vae.training.LOSSES[loss]

    class Spy(elbo_class):
        def loss_and_grads(self, *args, **kwargs):
            used.append((elbo_class, self.num_particles, self.vectorize_particles))
            return super().loss_and_grads(*args, **kwargs)

    monkeypatch.setitem(pyro_vae.training.LOSSES, loss, Spy)
    model, guide = stock_pair()
    history = pyro_vae.fit(
        model,
        guide,
        digits.train_x[:512],
        epochs=4,
        loss=loss,
        num_particles=particles,
        vectorize_particles=vectorize,
        progress=False,
    )
    assert history.val_elbo[-1] > history.val_elbo[0] + 5.0
    assert set(used) == {(elbo_class, particles, vectorize)}


def test_early_stopping_restores_the_best_epoch(digits):
    """Validating on inverted digits: the better the model fits digits, the worse it fits their
    negatives, so the best validation epoch is an early one and training stops."""
    model, guide = stock_pair()
    inverted = 1.0 - digits.test_x
    history = pyro_vae.fit(
        model, guide, digits.train_x, epochs=40, validation=inverted, patience=3, lr=3e-3, progress=False
    )
    assert history.stopped_early
    assert len(history.epoch) == history.best_epoch + 3
    restored = pyro_vae.elbo(model, guide, inverted, num_samples=20).mean().item()
    best, last = history.val_elbo[history.best_epoch - 1], history.val_elbo[-1]
    assert abs(restored - best) < abs(restored - last)


def test_time_budget_stops_training(digits):
    model, guide = stock_pair()
    history = pyro_vae.fit(model, guide, digits.train_x, epochs=1000, max_minutes=0.02, progress=False)
    assert 1 <= len(history.epoch) < 1000
    assert history.wall_time - history.seconds[-1] < 60 * 0.02 <= history.wall_time


def test_a_second_model_with_the_same_parameter_names_trains(digits):
    """Pyro's global parameter store must not hand the second model the first one's tensors."""
    for _ in range(2):
        model, guide = stock_pair()
        before = [p.detach().clone() for p in model.parameters()]
        pyro_vae.fit(model, guide, digits.train_x[:256], epochs=1, progress=False)
        assert all(not torch.equal(b, a) for b, a in zip(before, model.parameters(), strict=True))


def test_model_and_guide_sharing_parameter_names_is_refused():
    class Model(PyroModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(2, 3)

        def forward(self, x, y=None, size=None):
            with pyro.plate("data", size, subsample=x):
                z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(self.net(z), 1.0).to_event(1), obs=x)

    class Guide(PyroModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(3, 2)

        def forward(self, x, y=None, size=None):
            with pyro.plate("data", size, subsample=x):
                pyro.sample("z", dist.Normal(self.net(x), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"net\.weight"):
        pyro_vae.fit(Model(), Guide(), torch.randn(20, 3), epochs=1, progress=False)


def test_bad_arguments_are_named():
    model, guide = stock_pair((6,), "bernoulli")
    x = torch.zeros(10, 6)
    with pytest.raises(ValueError, match="unknown loss"):
        pyro_vae.fit(model, guide, x, loss="nope", progress=False)
    with pytest.raises(ValueError, match="unknown optimizer"):
        pyro_vae.fit(model, guide, x, optimizer="sgd", progress=False)
    with pytest.raises(ValueError, match="validation fraction"):
        pyro_vae.fit(model, guide, x, validation=1.5, progress=False)
    with pytest.raises(TypeError, match="data must be"):
        pyro_vae.fit(model, guide, [x, x, x], progress=False)
    with pytest.raises(ValueError, match="needs validation data"):
        pyro_vae.fit(model, guide, x, validation=None, patience=3, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    model, guide = stock_pair((6,), "bernoulli")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pyro_vae.fit(model, guide, torch.zeros(10, 6), device="cuda", progress=False)


def test_transform_binarizes_every_minibatch_afresh(digits):
    grey = digits.train_x[:300]  # pixels in [0, 1]: outside a Bernoulli's support
    model = VAE.build(digits.x_shape, 2, [32], "mlp", "bernoulli")
    guide = AmortizedNormal.build(digits.x_shape, 2, [32], "mlp")
    with pytest.raises(ValueError):
        pyro_vae.fit(model, guide, grey, epochs=1, validation=None, progress=False)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def binarize(x: torch.Tensor) -> torch.Tensor:
        binary = torch.bernoulli(x)
        calls.append((x, binary))
        return binary

    observed: list[torch.Tensor] = []

    class Spy(VAE):
        def forward(self, x=None, y=None, size=None):
            if torch.is_grad_enabled():  # a training step, not the validation ELBO
                observed.append(x)
            return super().forward(x, y, size)

    model = Spy(model.decoder, model.likelihood, model.latent_dim)
    history = pyro_vae.fit(model, guide, grey, epochs=2, batch_size=100, validation=0.2, transform=binarize)
    assert len(history.val_elbo) == 2 and all(map(math.isfinite, history.val_elbo))
    # The first batch (structure check), the validation data once, then 3 batches per epoch.
    assert len(calls) == 1 + 1 + 2 * 3
    epochs = [calls[2:5], calls[5:8]]
    # the model trains on what the transform returned for each minibatch, not on the grey data
    assert len(observed) == 6 and all(seen is binary for seen, (_, binary) in zip(observed, calls[2:], strict=True))
    # each epoch binarizes every training datum once, and the second epoch draws afresh
    draws = [
        {tuple(x.flatten().tolist()): b for xs, bs in epoch for x, b in zip(xs, bs, strict=True)} for epoch in epochs
    ]
    assert len(draws[0]) == len(draws[1]) == 240 and draws[0].keys() == draws[1].keys()
    redrawn = sum(not torch.equal(draws[0][key], draws[1][key]) for key in draws[0])
    assert redrawn > 200, f"only {redrawn} of 240 data were binarized differently in the second epoch"


@pytest.mark.parametrize("device", DEVICES)
def test_resuming_from_an_epoch_state_matches_the_uninterrupted_run(digits, device):
    def pair():
        pyro.set_rng_seed(3)
        return stock_pair()

    states, snapshots = {}, {}
    model, guide = pair()

    def remember(state):
        states[state.epoch] = state
        snapshots[state.epoch] = (copy.deepcopy(model.state_dict()), copy.deepcopy(guide.state_dict()))

    options = {"epochs": 5, "batch_size": 256, "warmup_epochs": 2.0, "patience": 4, "seed": 1, "device": device}
    uninterrupted = pyro_vae.fit(model, guide, digits.train_x, on_epoch_end=remember, **options)
    assert sorted(states) == [1, 2, 3, 4, 5]

    resumed_model, resumed_guide = pair()
    resumed_model.load_state_dict(snapshots[2][0])
    resumed_guide.load_state_dict(snapshots[2][1])
    torch.manual_seed(12345)  # whatever happened in between does not matter (on CUDA's generators too)
    resumed = pyro_vae.fit(resumed_model, resumed_guide, digits.train_x, resume=states[2], **options)
    assert resumed.epoch == uninterrupted.epoch and resumed.val_elbo == uninterrupted.val_elbo
    for part, reference in ((resumed_model, model), (resumed_guide, guide)):
        for (name, value), expected in zip(part.state_dict().items(), reference.state_dict().values(), strict=True):
            assert torch.equal(value, expected), name
    # A fresh run from the epoch-2 parameters without the state does not match: the state matters.
    fresh_model, fresh_guide = pair()
    fresh_model.load_state_dict(snapshots[2][0])
    fresh_guide.load_state_dict(snapshots[2][1])
    pyro_vae.fit(fresh_model, fresh_guide, digits.train_x, **{**options, "epochs": 3})
    assert not torch.equal(next(iter(fresh_model.parameters())), next(iter(model.parameters())))


def _poison_after(model, calls: int):
    """A transform that sets one decoder weight to NaN on its ``calls``-th call (a numerical
    blow-up in the middle of training)."""
    count = [0]

    def transform(x):
        count[0] += 1
        if count[0] == calls:
            with torch.no_grad():
                next(model.decoder.parameters()).view(-1)[0] = float("nan")
        return x

    return transform


def test_a_numerical_fault_names_the_epoch_and_keeps_the_last_checkpoint(digits, tmp_path):
    from pyro_vae.checkpoint import load_checkpoint, save_checkpoint

    model, guide = stock_pair()
    path = tmp_path / "checkpoint.pt"

    def save(state):
        save_checkpoint(path, model, guide, {"epoch": state.epoch}, training=state.to_dict())

    # 2 calls before training (structure check, validation data), 6 batches of 256 per epoch.
    poison = _poison_after(model, 2 + 6 * 2 + 3)  # the third batch of epoch 3
    with pytest.raises(FloatingPointError, match=r"epoch 3, step 3.*learning rate"):
        pyro_vae.fit(model, guide, digits.train_x, epochs=5, batch_size=256, transform=poison, on_epoch_end=save)
    saved = load_checkpoint(path)
    assert saved.training["epoch"] == 2 and saved.config == {"epoch": 2}
    assert all(torch.isfinite(value).all() for value in saved.model_state.values())


def test_rollback_recovers_from_a_numerical_fault(digits):
    model, guide = stock_pair()
    poison = _poison_after(model, 2 + 6 + 2)
    with pytest.warns(RuntimeWarning, match="rolled back.*lowered to 0.0005"):
        history = pyro_vae.fit(
            model, guide, digits.train_x, epochs=4, batch_size=256, transform=poison, on_nonfinite="rollback"
        )
    assert history.rollbacks == 1 and history.epoch == [1, 2, 3, 4]
    assert all(math.isfinite(value) for value in history.val_elbo)
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())
    assert history.val_elbo[-1] > history.val_elbo[0]  # it went on learning


def faulting(model, faults: list[int]):
    """``model`` whose next ``faults[0]`` gradient-enabled calls give an infinite loss."""

    def faulty_model(x, y=None, size=None):
        if faults[0] > 0 and torch.is_grad_enabled():
            faults[0] -= 1
            with poutine.scale(scale=float("inf")):
                return model(x, y=y, size=size)
        return model(x, y=y, size=size)

    return faulty_model


def test_each_rollback_halves_the_learning_rate_again(digits):
    """Three faults in the same epoch (the rollback repeats it): 5e-4, 2.5e-4, 1.25e-4, each
    from the rate in force, not from the one saved with the last completed epoch."""
    model, guide = stock_pair()
    faults = [0]
    faulty_model = faulting(model, faults)

    def fault_thrice_after_epoch_one(state):
        if state.epoch == 1:
            faults[0] = 3

    with pytest.warns(RuntimeWarning) as caught:
        history = pyro_vae.fit(
            faulty_model,
            guide,
            digits.train_x[:256],
            epochs=2,
            batch_size=64,
            validation=None,
            on_nonfinite="rollback",
            on_epoch_end=fault_thrice_after_epoch_one,
        )
    messages = [str(warning.message) for warning in caught if "rolled back" in str(warning.message)]
    rates = [re.search(r"lowered to ([0-9.e-]+),", message).group(1) for message in messages]
    assert rates == ["0.0005", "0.00025", "0.000125"] and history.rollbacks == 3


def test_resuming_a_finished_run_changes_nothing(digits):
    model, guide = stock_pair()
    states = []
    history = pyro_vae.fit(model, guide, digits.train_x, epochs=2, patience=1, on_epoch_end=states.append)
    before = copy.deepcopy(model.state_dict())
    again = pyro_vae.fit(model, guide, digits.train_x, epochs=2, patience=1, resume=states[-1])
    assert again.epoch == history.epoch
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    # fit does not consume the state it resumes from
    assert states[-1].history["epoch"] == [1, 2]


def test_grey_data_after_the_first_batch_of_a_dataset_are_refused():
    """Only the first batch of a Dataset is checked up front; FastSVI does not validate, so fit
    checks every minibatch against the likelihood's support."""
    model, guide = stock_pair(likelihood="bernoulli")
    x = torch.rand(256, 1, 8, 8)
    x[:128] = (x[:128] > 0.5).float()
    with pytest.raises(ValueError, match="support"):
        pyro_vae.fit(model, guide, TensorDataset(x), epochs=1, batch_size=128, validation=None, progress=False)


@pytest.mark.parametrize(
    "problem,validation,message",
    [
        ("nan", torch.full((10, 6), float("nan")), "the validation data holds 60 NaN"),
        ("integers", torch.zeros(10, 6, dtype=torch.long), "the validation data must hold floating-point"),
        (
            "datum shape",
            torch.zeros(10, 5),
            r"the validation data have datum shape \(5,\) but the training data \(6,\)",
        ),
        ("dtype", torch.zeros(10, 6, dtype=torch.float64), "the validation data are torch.float64 but the training"),
        ("labels", (torch.zeros(10, 6), torch.zeros(9, dtype=torch.long)), "labels y of the validation data"),
    ],
)
def test_explicit_validation_data_are_checked_like_the_training_data_before_training(problem, validation, message):
    model, guide = stock_pair((6,), "bernoulli")
    trained = []
    with pytest.raises((ValueError, TypeError), match=message):
        pyro_vae.fit(
            model,
            guide,
            torch.zeros(40, 6),
            epochs=1,
            validation=validation,
            on_epoch_end=trained.append,
            progress=False,
        )
    assert not trained  # refused up front, not after an epoch of training


def test_explicit_validation_data_go_through_the_models_own_check():
    seen = []

    class Checked(VAE):
        def validate(self, x, y):
            seen.append(len(x))

    base, guide = stock_pair((6,), "bernoulli")
    model = Checked(base.decoder, base.likelihood, base.latent_dim)
    pyro_vae.fit(model, guide, torch.zeros(40, 6), epochs=1, validation=torch.zeros(7, 6), progress=False)
    assert seen == [40, 7]


def test_rollback_messages_name_what_was_restored_and_a_remedy_other_than_rolling_back(digits):
    """The rollback's warning says what it restored and what to change if faults recur; once the
    rollbacks are spent, the error names remedies, not on_nonfinite='rollback', which is in force."""
    model, guide = stock_pair()
    faults = [0]
    faulty_model = faulting(model, faults)

    def fault_after_epoch_one(state):
        if state.epoch == 1:
            faults[0] = pyro_vae.training.MAX_ROLLBACKS + 1

    with pytest.warns(RuntimeWarning) as caught, pytest.raises(FloatingPointError) as error:
        pyro_vae.fit(
            faulty_model,
            guide,
            digits.train_x[:256],
            epochs=3,
            batch_size=64,
            validation=None,
            on_nonfinite="rollback",
            on_epoch_end=fault_after_epoch_one,
        )
    warned = [str(warning.message) for warning in caught if "rolled back" in str(warning.message)]
    assert len(warned) == pyro_vae.training.MAX_ROLLBACKS
    for message in warned:
        assert "epoch 2, step 1" in message
        assert "restored the pair's parameters and the optimizer state from the end of epoch 1" in message
        assert "repeated epoch 2" in message and "clip_norm" in message and "learning rate (lr)" in message
        assert "on_nonfinite" not in message and "--on-nonfinite" not in message
    final = str(error.value)
    assert f"after {pyro_vae.training.MAX_ROLLBACKS} rollbacks" in final and "lowered to 0.000125" in final
    assert "clip_norm" in final and "warmup_epochs" in final and "on_nonfinite" not in final


def test_rolling_back_a_fault_in_the_first_epoch_restores_the_initial_parameters(digits):
    model, guide = stock_pair()
    poison = _poison_after(model, 2 + 3)  # the third batch of epoch 1
    with pytest.warns(RuntimeWarning, match="optimizer state from the start of training"):
        pyro_vae.fit(model, guide, digits.train_x, epochs=1, batch_size=256, transform=poison, on_nonfinite="rollback")


def test_without_rollback_a_fault_suggests_remedies_and_rollback(digits):
    model, guide = stock_pair()
    poison = _poison_after(model, 2 + 3)
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 3.*clip_norm.*on_nonfinite='rollback'"):
        pyro_vae.fit(model, guide, digits.train_x, epochs=1, batch_size=256, transform=poison)


def closure_pair(dtype=torch.float32):
    """A plain-function pair whose networks fit does not see (closures registered by pyro.module)."""
    decoder, encoder = nn.Linear(2, 4).to(dtype), nn.Linear(4, 4).to(dtype)

    def model(x, y=None, size=None):
        pyro.module("decoder", decoder)
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 0.1).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", size, subsample=x):
            loc, raw = encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    return model, guide


@pytest.mark.parametrize("pair", ["modules", "closures"])
def test_data_of_another_dtype_than_the_networks_is_a_clear_error(pair):
    """float64 data (from NumPy, say) for float32 networks, and float32 data for float64 ones."""
    make = {
        "modules": lambda dtype: [part.to(dtype) for part in stock_pair((4,), "gaussian")],
        "closures": closure_pair,
    }
    pyro.clear_param_store()
    model, guide = make[pair](torch.float32)
    with pytest.raises(TypeError, match=r"float64 but the model or guide computes in torch.float32.*x\.float\(\).*"
                       r"model\.double\(\) and guide\.double\(\)"):  # fmt: skip
        pyro_vae.fit(model, guide, torch.randn(40, 4, dtype=torch.float64), epochs=1, progress=False)
    pyro.clear_param_store()
    model, guide = make[pair](torch.float64)
    with pytest.raises(TypeError, match=r"float32 but the model or guide computes in torch.float64.*x\.double\(\).*"
                       r"model\.float\(\) and guide\.float\(\)"):  # fmt: skip
        pyro_vae.fit(model, guide, torch.randn(40, 4), epochs=1, progress=False)
    pyro.clear_param_store()
    model, guide = make[pair](torch.float64)  # matching dtypes train
    history = pyro_vae.fit(model, guide, torch.randn(40, 4, dtype=torch.float64), epochs=1, progress=False)
    assert math.isfinite(history.val_elbo[0])


def _record_splits(monkeypatch) -> list[torch.Tensor]:
    splits: list[torch.Tensor] = []
    split_data = pyro_vae.training.split_data

    def recording(data, validation, seed):
        train, held_out = split_data(data, validation, seed)
        splits.append(held_out[0])
        return train, held_out

    monkeypatch.setattr(pyro_vae.training, "split_data", recording)
    return splits


def test_an_unseeded_fit_draws_its_validation_split_without_reseeding(monkeypatch):
    """seed=None: the held-out data come from the caller's random stream (another state, another
    split), the global generator is advanced but never reseeded; seed=k holds out the same data."""
    splits = _record_splits(monkeypatch)
    x = torch.arange(200.0).unsqueeze(-1).expand(200, 4).contiguous()

    def run(caller_seed: int | None, seed: int | None = None) -> None:
        if caller_seed is not None:
            torch.manual_seed(caller_seed)
        model, guide = stock_pair((4,), "gaussian")
        initial = torch.initial_seed()
        pyro_vae.fit(model, guide, x, epochs=1, batch_size=50, seed=seed, progress=False)
        if seed is None:
            assert torch.initial_seed() == initial, "fit(seed=None) reseeded torch's global generator"

    run(5), run(5), run(6), run(None)
    assert torch.equal(splits[0], splits[1])
    assert not torch.equal(splits[0], splits[2]) and not torch.equal(splits[2], splits[3])
    run(5, seed=3), run(6, seed=3)
    assert torch.equal(splits[4], splits[5])


def test_an_unseeded_run_resumes_with_its_own_validation_split(monkeypatch):
    splits = _record_splits(monkeypatch)
    x = torch.arange(200.0).unsqueeze(-1).expand(200, 4).contiguous()
    model, guide = stock_pair((4,), "gaussian")
    states = []
    pyro_vae.fit(model, guide, x, epochs=2, batch_size=50, on_epoch_end=states.append, progress=False)
    torch.manual_seed(12345)  # whatever happened in between
    pyro_vae.fit(model, guide, x, epochs=2, batch_size=50, resume=states[0], progress=False)
    assert torch.equal(splits[0], splits[1])


def test_the_pair_is_inspected_once_per_fit_and_validated_with_current_globals(monkeypatch):
    """The validation ELBO reuses fit's inspection (no inspect_pair per epoch), and still holds the
    global latent at the mean the guide has now, not at the one it had when it was inspected."""
    inspections = []
    for module in (pyro_vae.training, pyro_vae.scoring):
        original = module.inspect_pair

        def counting(*args, _original=original, **kwargs):
            inspections.append(args[2].shape[0])
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, "inspect_pair", counting)
    pyro.clear_param_store()
    decoder, encoder = nn.Linear(1, 3), nn.Linear(3, 2)

    def model(x, y=None, size=None):
        pyro.module("decoder", decoder)
        log_sigma = pyro.sample("log_sigma", dist.Normal(0.0, 3.0))  # a global latent
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), log_sigma.exp()).to_event(1), obs=x)

    def guide(x, y=None, size=None):
        pyro.module("encoder", encoder)
        shift = pyro.param("log_sigma_shift", torch.tensor(0.0))
        pyro.sample("log_sigma", dist.Normal(2.0 + shift, 0.01))  # a computed mean: stale in an old trace
        with pyro.plate("data", size, subsample=x):
            loc, raw = encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    generator = torch.Generator().manual_seed(0)
    z = torch.randn(1500, 1, generator=generator)
    x = z * torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(1500, 3, generator=generator)
    x_val = x[1000:]
    history = pyro_vae.fit(model, guide, x[:1000], epochs=8, batch_size=100, lr=0.05, validation=x_val)
    assert inspections == [100]  # one inspection, of the first training batch
    assert pyro.param("log_sigma_shift").item() < -2.0  # the global moved a long way from log σ = 2
    scored = pyro_vae.elbo(model, guide, x_val, num_samples=20).mean().item()
    assert history.val_elbo[-1] == pytest.approx(scored, abs=0.5)


class Owner(nn.Module):
    """A program whose model and guide are methods (``fit(owner.model, owner.guide, ...)``) and
    which records where it is moved."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder, self.encoder = nn.Linear(2, 4), nn.Linear(4, 4)
        self.moved_to: list = []

    def to(self, *args, **kwargs):
        self.moved_to.append(torch.device(args[0]) if args else kwargs.get("device"))
        return super().to(*args, **kwargs)

    def model(self, x):
        pyro.module("owner", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, device=x.device), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.1).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("owner", self)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def test_the_module_of_bound_methods_is_moved_to_the_device():
    owner = Owner()
    pyro_vae.fit(owner.model, owner.guide, torch.randn(40, 4), epochs=1, device="cpu", progress=False)
    assert owner.moved_to == [torch.device("cpu")]  # once, though it owns both programs


@pytest.mark.gpu
def test_bound_methods_train_on_the_gpu():
    owner = Owner()
    history = pyro_vae.fit(owner.model, owner.guide, torch.randn(40, 4), epochs=2, device="cuda", progress=False)
    assert all(parameter.is_cuda for parameter in owner.parameters())
    assert all(map(math.isfinite, history.val_elbo))


def exploding(model, after_epoch: int, steps: int = 6, factor: float = 1e6):
    """``model``, and an ``on_epoch_end`` callback: the ``steps`` training steps after epoch
    ``after_epoch`` weigh the log density ``factor`` times (a finite loss, orders of magnitude worse)."""
    armed = [0]

    def exploding_model(x, y=None, size=None):
        if armed[0] > 0 and torch.is_grad_enabled():
            armed[0] -= 1
            with poutine.scale(scale=factor):
                return model(x, y=y, size=size)
        return model(x, y=y, size=size)

    def arm(state) -> None:
        if state.epoch == after_epoch:
            armed[0] = steps

    return exploding_model, arm


def test_a_diverging_run_stops_with_a_numerical_fault(digits):
    """Epoch 3's objective is 10⁶ times worse but finite: that is divergence, not success."""
    model, guide = stock_pair(likelihood="bernoulli")  # a negative ELBO, which the factor makes worse
    model, arm = exploding(model, after_epoch=2)
    binary = (digits.train_x > 0.5).float()
    with pytest.raises(FloatingPointError, match=r"diverged.*epoch 3.*clip_norm"):
        pyro_vae.fit(model, guide, binary, epochs=4, batch_size=256, on_epoch_end=arm)


def test_a_diverging_epoch_rolls_back_when_asked(digits):
    model, guide = stock_pair(likelihood="bernoulli")
    model, arm = exploding(model, after_epoch=2)
    binary = (digits.train_x > 0.5).float()
    with pytest.warns(RuntimeWarning, match="diverged.*rolled back"):
        history = pyro_vae.fit(
            model, guide, binary, epochs=4, batch_size=256, on_epoch_end=arm, on_nonfinite="rollback"
        )
    assert history.rollbacks == 1 and history.epoch == [1, 2, 3, 4]
    assert max(history.train_elbo) - min(history.train_elbo) < 1000  # the bad epoch was repeated, not kept


def test_kl_warm_up_is_not_taken_for_divergence(digits):
    """With β rising to 500 over 2 epochs the objective falls far below its β = 0 start: not a fault."""
    model, guide = stock_pair()
    history = pyro_vae.fit(model, guide, digits.train_x, epochs=4, batch_size=256, beta=500.0, warmup_epochs=2)
    assert history.epoch == [1, 2, 3, 4]
