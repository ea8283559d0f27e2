"""The VampPrior VAE and the mixture density behind it."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae
from pyro_vae.distributions import DiagonalNormalMixture
from pyro_vae.fast_svi import FastSVI
from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VampPriorVAE
from pyro_vae.models.vampprior import check_pseudo_inputs, initial_pseudo_inputs

SHAPE = (1, 6, 6)


def _reference_log_prob(loc: torch.Tensor, scale: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    components = dist.Normal(loc, scale).to_event(1)
    mixture = dist.MixtureSameFamily(dist.Categorical(logits=torch.zeros(loc.shape[0], dtype=loc.dtype)), components)
    return mixture.log_prob(value)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_mixture_log_prob_matches_mixture_same_family(dtype, tolerance):
    generator = torch.Generator().manual_seed(0)
    loc = torch.randn(7, 5, generator=generator, dtype=dtype)
    scale = 0.05 + torch.rand(7, 5, generator=generator, dtype=dtype)
    value = torch.cat([loc[:3] + 0.01, torch.randn(4, 2, 5, generator=generator, dtype=dtype).reshape(8, 5)])
    ours = DiagonalNormalMixture(loc, scale).expand([11]).log_prob(value)
    assert ours.shape == (11,)
    assert torch.allclose(ours, _reference_log_prob(loc, scale, value), atol=tolerance, rtol=0)


def test_mixture_samples_have_the_mixture_moments():
    loc = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])
    scale = torch.tensor([[0.5, 0.1], [0.5, 0.1]])
    pyro.set_rng_seed(0)
    draws = DiagonalNormalMixture(loc, scale).expand([3]).sample((20_000,))
    assert draws.shape == (20_000, 3, 2)
    assert torch.allclose(draws.mean((0, 1)), torch.tensor([0.0, 0.5]), atol=0.05)
    assert torch.allclose(draws[..., 0].std(), torch.tensor(math.sqrt(4 + 0.25)), atol=0.05)


def test_mixture_log_prob_keeps_float32_precision_for_narrow_components():
    """40 dimensions, scales 0.05, means near ±2: the expanded quadratic form cancels terms of
    ~3e4 (0.07 nats of float32 rounding if computed in float32); the float32 result must match
    the float64 reference to float32 precision of the answer itself."""
    generator = torch.Generator().manual_seed(1)
    loc = 2 * torch.randn(50, 40, generator=generator, dtype=torch.float64).sign()
    scale = torch.full((50, 40), 0.05, dtype=torch.float64)
    value = loc[:20] + 0.05 * torch.randn(20, 40, generator=generator, dtype=torch.float64)
    reference = _reference_log_prob(loc, scale, value)
    ours = DiagonalNormalMixture(loc.float(), scale.float()).log_prob(value.float())
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), reference, rtol=0, atol=1e-4)


def test_mixture_log_prob_has_the_batch_shape():
    mixture = DiagonalNormalMixture(torch.zeros(3, 2), torch.ones(3, 2)).expand([4])
    assert mixture.log_prob(torch.zeros(2)).shape == (4,)


def test_mixture_rejects_mismatched_parameters():
    with pytest.raises(ValueError, match="components, dim"):
        DiagonalNormalMixture(torch.zeros(3, 2), torch.ones(3, 4))


def _pair(data: torch.Tensor, pseudo: int = 8) -> tuple[VampPriorVAE, AmortizedNormal]:
    pyro.set_rng_seed(0)
    guide = AmortizedNormal.build(SHAPE, 3, (16,), "mlp")
    model = VampPriorVAE.build_for(guide, 0.05 + 0.9 * data[:pseudo], 3, (16,), bounds=(0.0, 1.0))
    return model, guide


@pytest.fixture
def binary_images() -> torch.Tensor:
    """Two binary patterns with 5 % of the pixels flipped: structure a VAE can learn."""
    generator = torch.Generator().manual_seed(1)
    patterns = (torch.rand(2, *SHAPE, generator=generator) > 0.5).float()
    images = patterns[torch.arange(64) % 2]
    flips = torch.rand(images.shape, generator=generator) < 0.05
    return torch.where(flips, 1 - images, images)


def test_pseudo_inputs_on_a_bound_are_refused(binary_images):
    guide = AmortizedNormal.build(SHAPE, 3, (16,), "mlp")
    with pytest.raises(ValueError, match="strictly inside bounds"):
        VampPriorVAE.build_for(guide, binary_images[:4], 3, (16,), bounds=(0.0, 1.0))


def test_prior_is_the_guide_posterior_averaged_over_pseudo_inputs(binary_images):
    model, guide = _pair(binary_images)
    z = torch.randn(5, 3)
    posterior = guide.posterior(model.pseudo_inputs)
    expected = posterior.log_prob(z[:, None]).logsumexp(-1) - math.log(8)
    assert torch.allclose(model.prior().log_prob(z), expected, atol=1e-5)


def test_encoder_is_shared_and_learns_from_the_prior(binary_images):
    model, guide = _pair(binary_images)
    pyro.clear_param_store()
    loss = FastSVI(model, guide, pyro.optim.Adam({"lr": 1e-3})).loss(binary_images)
    loss.backward()
    store = pyro.get_param_store()
    encoder_names = [name for name in store.keys() if name.startswith("encoder")]
    assert "pseudo_inputs" in store.keys() and store["pseudo_inputs"].grad.abs().sum() > 0
    # one entry per encoder tensor: the model reaches the encoder through the guide, not a copy
    assert len(encoder_names) == len(list(guide.encoder.parameters()))
    # the prior's pseudo-inputs reach the encoder: with the data term alone its gradient differs
    prior_only = model.prior().log_prob(torch.zeros(3)).sum()
    first_weight = guide.encoder.mlp[0].weight
    (gradient,) = torch.autograd.grad(prior_only, first_weight)
    assert gradient.abs().sum() > 0


def test_fast_path_equals_trace_elbo_and_training_improves(binary_images):
    model, guide = _pair(binary_images)
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    fast = FastSVI(model, guide, pyro.optim.Adam({"lr": 1e-3})).loss(binary_images)
    pyro.set_rng_seed(3)
    reference = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, binary_images)
    assert torch.allclose(fast, reference, rtol=1e-5)

    before = pyro_vae.elbo(model, guide, binary_images, num_samples=20).mean()
    pyro_vae.fit(model, guide, binary_images, epochs=30, batch_size=16, lr=1e-2, validation=None, progress=False)
    after = pyro_vae.elbo(model, guide, binary_images, num_samples=20).mean()
    assert after > before + 1.0


def test_importance_sampled_score_and_generation(binary_images):
    model, guide = _pair(binary_images)
    pyro.set_rng_seed(0)
    log_px = pyro_vae.log_likelihood(model, guide, binary_images[:6], num_samples=200)
    bound = pyro_vae.elbo(model, guide, binary_images[:6], num_samples=200)
    assert log_px.shape == (6,) and torch.isfinite(log_px).all()
    assert (log_px >= bound - 1e-4).all()
    assert model(None, size=4).shape == (4, *SHAPE)


@pytest.mark.parametrize("model", ["vae", "hierarchical"])
def test_the_command_line_trains_and_scores_with_the_vampprior(tmp_path, model):
    import json

    from pyro_vae.cli.stock import build_pair, load_run
    from tests.test_cli import pyro_vae as cli

    run = tmp_path / "run"
    result = cli(
        *("train", "--dataset", "digits", "--model", model, "--prior", "vampprior", "--pseudo-inputs", "12"),
        *("--epochs", "2", "--latent-dim", "3", "--hidden", "16", "--score-samples", "3", "--quiet"),
        *("--out", str(run)),
    )
    assert result.returncode == 0, result.stderr
    assert "VampPrior (12 pseudo-inputs)" in result.stdout
    config = json.loads((run / "config.json").read_text())
    assert (config["prior"], config["pseudo_inputs"]) == ("vampprior", 12)
    loaded = load_run(run)
    assert loaded.model.pseudo_inputs.shape == (12, 1, 8, 8)
    assert not torch.equal(loaded.model.pseudo_inputs, torch.full((12, 1, 8, 8), 0.5))  # the trained ones
    score = cli("score", str(run), "--num-samples", "4", "--out", str(tmp_path / "scores"))
    assert score.returncode == 0, score.stderr
    sample = cli("sample", str(run), "--num", "4", "--out", str(tmp_path / "samples.png"))
    assert sample.returncode == 0, sample.stderr
    train_x = torch.rand(40, 1, 8, 8)
    pyro.set_rng_seed(0)
    fresh, _ = build_pair(config, train_x)
    starts = (fresh.pseudo_inputs.detach() - 0.05) / 0.9  # each starts at a training image, moved inside (0, 1)
    gaps = (starts.flatten(1)[:, None] - train_x.flatten(1)[None]).abs().amax(-1).min(1).values
    assert gaps.max() < 1e-5


def test_the_command_line_refuses_the_vampprior_without_a_normal_guide(tmp_path):
    from tests.test_cli import pyro_vae as cli

    out = str(tmp_path / "r")
    result = cli("train", "--dataset", "digits", "--prior", "vampprior", "--guide", "delta", "--out", out)
    assert result.returncode == 2 and "drop --conditional and --guide" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2
    result = cli("train", "--dataset", "digits", "--pseudo-inputs", "5", "--out", out)
    assert result.returncode == 2 and "add --prior vampprior" in result.stderr


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "hierarchical", "layers": 2, "conditional": True, "num_classes": 10},
        {"model": "hierarchical", "layers": 2, "guide": "delta"},
        {"prior": "vampprior", "pseudo_inputs": 4, "conditional": True, "num_classes": 10},
        {"prior": "vampprior", "pseudo_inputs": 4, "guide": "delta"},
        {"conditional": True, "num_classes": 10, "guide": "delta"},
    ],
    ids=[
        "hierarchical-conditional",
        "hierarchical-delta",
        "vampprior-conditional",
        "vampprior-delta",
        "conditional-delta",
    ],
)
def test_a_stock_configuration_no_pair_has_is_refused_naming_what_to_drop(changes):
    """The same refusal for a config read from a checkpoint as for the command line's flags: a
    conditional VampPrior config used to build the conditional VAE and drop the prior silently."""
    from pyro_vae.cli.stock import build_pair

    config = {"x_shape": [1, 8, 8], "latent_dim": 2, "hidden": [8], "arch": "mlp", "likelihood": "bernoulli"}
    with pytest.raises(ValueError, match=r"drop (--conditional and )?--guide"):
        build_pair(config | {"guide": "normal"} | changes)


def test_pseudo_inputs_start_at_training_rows_not_at_held_out_ones():
    import argparse

    from pyro_vae.cli.train import _training_part
    from pyro_vae.training import split_data

    x = torch.arange(50.0).reshape(50, 1)
    pool = _training_part(x, argparse.Namespace(validation=0.2, seed=3))
    (_, _), (held_out, _) = split_data(x, 0.2, 3)
    assert len(pool) == 40 and not set(pool.flatten().tolist()) & set(held_out.flatten().tolist())
    assert torch.equal(_training_part(x, argparse.Namespace(validation=0.0, seed=3)), x)


def test_initial_pseudo_inputs_are_training_rows_moved_inside_the_bounds():
    data = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [0.5, 0.25]])
    torch.manual_seed(3)
    shrunk = initial_pseudo_inputs(data, 3, (0.0, 1.0))
    torch.manual_seed(3)
    rows = data[torch.randperm(4)[:3]]
    assert torch.equal(shrunk, 0.05 + 0.9 * rows)  # the formula the experiments used before, bit for bit
    wide = initial_pseudo_inputs(4 * data - 2, 4, (-2.0, 2.0))
    assert wide.min() == pytest.approx(-1.8) and wide.max() == pytest.approx(1.8)
    check_pseudo_inputs(wide, (-2.0, 2.0))
    assert torch.equal(initial_pseudo_inputs(data, 4, None).sort(0).values, data.sort(0).values)
