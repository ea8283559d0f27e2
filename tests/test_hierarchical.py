"""The hierarchical VAE and its top-down guide: sites, the shared generative path, training,
scoring, the VampPrior top, colour images through the conv path, checkpoints and the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

import pyro_vae
from pyro_vae import latent
from pyro_vae.cli.stock import build_pair, check_config
from pyro_vae.fast_svi import FastSVI
from pyro_vae.guides import TopDownGuide
from pyro_vae.models import HierarchicalVAE
from pyro_vae.program import latent_sites
from tests.test_cli import pyro_vae as cli

SHAPE = (1, 6, 6)
COLOUR = (3, 16, 16)


def _pair(
    shape=SHAPE, arch: str = "mlp", hidden=(16,), layers: int = 3, latent_dim=(4, 3, 2)
) -> tuple[HierarchicalVAE, TopDownGuide]:
    pyro.set_rng_seed(0)
    model = HierarchicalVAE.build(shape, latent_dim, hidden, arch, "bernoulli", layers)
    return model, TopDownGuide.build_for(model, shape, hidden, arch)


def _patterns(shape, rows: int, seed: int = 1) -> torch.Tensor:
    """Two binary patterns with 5 % of the values flipped: structure a VAE can learn."""
    generator = torch.Generator().manual_seed(seed)
    patterns = (torch.rand(2, *shape, generator=generator) > 0.5).float()
    images = patterns[torch.arange(rows) % 2]
    flips = torch.rand(images.shape, generator=generator) < 0.05
    return torch.where(flips, 1 - images, images)


@pytest.fixture
def binary_images() -> torch.Tensor:
    return _patterns(SHAPE, 64)


def test_sites_shapes_and_sampling(binary_images):
    model, guide = _pair()
    guide_trace = poutine.trace(guide).get_trace(binary_images[:5], size=100)
    trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(binary_images[:5], size=100)
    sizes = {name: trace.nodes[name]["value"].shape for name in ("z", "z2", "z1", "x")}
    assert sizes == {"z": (5, 2), "z2": (5, 3), "z1": (5, 4), "x": (5, *SHAPE)}
    assert trace.nodes["x"]["is_observed"] and trace.nodes["x"]["scale"] == 20.0
    for name in ("z", "z2", "z1", "x"):
        frames = {frame.name: frame.full_size for frame in trace.nodes[name]["cond_indep_stack"]}
        assert frames == {"data": 100}, name
    drawn = model(None, size=7)
    assert drawn.shape == (7, *SHAPE) and set(drawn.unique().tolist()) <= {0.0, 1.0}
    assert model.decode(model.prior().sample((3,))).shape == (3, *SHAPE)
    with pytest.raises(ValueError, match="size="):
        model(None)


def test_guide_covers_every_model_latent_in_top_down_order(binary_images):
    model, guide = _pair()
    guide_trace = poutine.trace(guide).get_trace(binary_images[:4])
    model_trace = poutine.trace(model).get_trace(binary_images[:4])
    assert list(latent_sites(guide_trace)) == list(latent_sites(model_trace)) == ["z", "z2", "z1"]


@pytest.mark.parametrize("layers", [0, 1])
def test_fewer_than_two_layers_are_refused(layers):
    with pytest.raises(ValueError, match="at least 2"):
        HierarchicalVAE.build(SHAPE, 3, (16,), layers=layers)


def test_guide_shares_the_models_top_down_path(binary_images):
    model, guide = _pair()
    pyro.clear_param_store()
    FastSVI(model, guide, pyro.optim.Adam({"lr": 1e-3})).loss(binary_images).backward()
    store = pyro.get_param_store()
    for prefix, module in (("lifts", model.lifts), ("priors", model.priors)):
        names = [name for name in store.keys() if name.startswith(prefix)]
        assert len(names) == len(list(module.parameters())), prefix
    assert not any(name.startswith("lifts") or name.startswith("priors") for name in guide.state_dict())
    # the guide's posterior of a lower layer moves with the model's prior network of that layer
    with poutine.block():
        trace = poutine.trace(guide).get_trace(binary_images[:4])
    (gradient,) = torch.autograd.grad(trace.nodes["z1"]["fn"].mean.sum(), model.priors[0][0].weight)
    assert gradient.abs().sum() > 0


@pytest.mark.parametrize("arch, hidden", [("mlp", (32,)), ("conv", (8, 16))])
def test_training_improves_the_elbo(arch, hidden):
    shape = (1, 8, 8)
    data = _patterns(shape, 128)
    model, guide = _pair(shape, arch, hidden, layers=2, latent_dim=3)
    pyro.set_rng_seed(2)
    before = pyro_vae.elbo(model, guide, data, num_samples=10).mean()
    pyro_vae.fit(model, guide, data, epochs=15, batch_size=32, lr=1e-2, validation=None, progress=False)
    after = pyro_vae.elbo(model, guide, data, num_samples=10).mean()
    assert after > before + 3.0


@pytest.mark.parametrize("loss", ["iwae", "dreg"])
def test_importance_weighted_training_improves_the_bound(loss):
    """The top-down guide shares the model's path: DReG's second pass must handle both roles."""
    shape = (1, 8, 8)
    data = _patterns(shape, 128)
    model, guide = _pair(shape, "mlp", (32,), layers=2, latent_dim=3)
    pyro.set_rng_seed(2)
    before = pyro_vae.log_likelihood(model, guide, data, num_samples=5).mean()
    history = pyro_vae.fit(
        model, guide, data, epochs=15, batch_size=32, lr=1e-2, loss=loss, num_particles=5, validation=None
    )
    after = pyro_vae.log_likelihood(model, guide, data, num_samples=5).mean()
    assert after > before + 3.0 and history.estimator.endswith("ELBO")


def test_per_datum_scores_and_log_likelihood_above_the_elbo(binary_images):
    model, guide = _pair()
    pyro_vae.fit(model, guide, binary_images, epochs=5, batch_size=16, lr=1e-2, validation=None, progress=False)
    pyro.set_rng_seed(0)
    bound = pyro_vae.elbo(model, guide, binary_images[:8], num_samples=200)
    log_px = pyro_vae.log_likelihood(model, guide, binary_images[:8], num_samples=200)
    assert bound.shape == log_px.shape == (8,) and torch.isfinite(log_px).all()
    assert log_px.mean() >= bound.mean()


def test_vampprior_top_is_the_top_posterior_over_pseudo_inputs(binary_images):
    model, guide = _pair()
    model.use_vampprior(guide.posterior, 0.05 + 0.9 * binary_images[:8], bounds=(0.0, 1.0))
    z = torch.randn(5, 2)
    expected = guide.posterior(model.pseudo_inputs).log_prob(z[:, None]).logsumexp(-1) - np.log(8)
    assert torch.allclose(model.prior().log_prob(z), expected, atol=1e-5)
    pyro.clear_param_store()
    FastSVI(model, guide, pyro.optim.Adam({"lr": 1e-3})).loss(binary_images).backward()
    store = pyro.get_param_store()
    assert store["pseudo_inputs"].grad.abs().sum() > 0
    assert len([name for name in store.keys() if name.startswith("encoder")]) == len(list(guide.encoder.parameters()))
    before = pyro_vae.elbo(model, guide, binary_images, num_samples=10).mean()
    pyro_vae.fit(model, guide, binary_images, epochs=15, batch_size=16, lr=1e-2, validation=None, progress=False)
    assert pyro_vae.elbo(model, guide, binary_images, num_samples=10).mean() > before + 1.0
    with pytest.raises(ValueError, match="strictly inside bounds"):
        model.use_vampprior(guide.posterior, binary_images[:4], bounds=(0.0, 1.0))


def test_colour_images_train_and_sample_through_the_conv_path():
    data = _patterns(COLOUR, 96)
    model, guide = _pair(COLOUR, "conv", (8, 16), layers=2, latent_dim=4)
    pyro.set_rng_seed(2)
    before = pyro_vae.elbo(model, guide, data, num_samples=5).mean()
    pyro_vae.fit(model, guide, data, epochs=10, batch_size=32, lr=1e-2, validation=None, progress=False)
    assert pyro_vae.elbo(model, guide, data, num_samples=5).mean() > before + 10.0
    assert model(None, size=4).shape == (4, *COLOUR)
    assert model.decode(model.prior().sample((4,))).shape == (4, *COLOUR)


def test_latent_tools_act_on_the_top_layer(binary_images):
    model, guide = _pair()
    codes = latent.encode(guide, binary_images[:5], site="z")
    assert torch.allclose(codes, guide.posterior(binary_images[:5]).mean)
    decoded = latent.decode(model.top_model, codes)
    assert torch.allclose(decoded, model.decode(codes), atol=1e-6)
    with pytest.raises(ValueError, match="3 per-datum latent sites"):
        latent.encode(guide, binary_images[:5])


def test_checkpoint_round_trip_gives_identical_scores(binary_images, tmp_path):
    model, guide = _pair()
    pyro_vae.fit(model, guide, binary_images, epochs=2, batch_size=16, validation=None, progress=False)
    config = {"x_shape": list(SHAPE), "latent_dim": [4, 3, 2], "hidden": [16], "layers": 3}
    path = pyro_vae.save_checkpoint(tmp_path / "h.pt", model, guide, config)
    loaded_model, loaded_guide = _pair()
    pyro_vae.load_checkpoint(path).load_into(loaded_model, loaded_guide)
    scores = []
    for pair in ((model, guide), (loaded_model, loaded_guide)):
        pyro.set_rng_seed(5)
        scores.append(pyro_vae.log_likelihood(*pair, binary_images[:8], num_samples=50))
    assert torch.equal(*scores)
    assert not torch.equal(scores[0], pyro_vae.log_likelihood(*_pair(), binary_images[:8], num_samples=50))


def test_stock_config_builds_the_pair_and_bad_values_are_named(tmp_path):
    config = {
        "x_shape": [1, 6, 6],
        "latent_dim": 2,
        "hidden": [16],
        "arch": "mlp",
        "likelihood": "bernoulli",
        "guide": "normal",
        "model": "hierarchical",
        "layers": 3,
    }
    check_config(config, tmp_path)
    model, guide = build_pair(config)
    assert isinstance(model, HierarchicalVAE) and model.latent_dims == (2, 2, 2)
    assert isinstance(guide, TopDownGuide)
    old = {key: value for key, value in config.items() if key not in ("model", "layers")}
    assert type(build_pair(old)[0]).__name__ == "VAE", "a run without the key is a plain VAE"
    for key, value in (("model", "ladder"), ("layers", 1)):
        with pytest.raises(ValueError, match=f"config key '{key}'"):
            check_config(config | {key: value}, tmp_path)
    with pytest.raises(ValueError, match=r"lacks \['layers'\]"):
        check_config({key: value for key, value in config.items() if key != "layers"}, tmp_path)


def test_cli_trains_scores_and_samples_a_colour_hierarchical_run(tmp_path):
    generator = np.random.default_rng(0)
    patterns = generator.random((2, 3, 8, 8))
    x = np.clip(patterns[np.arange(260) % 2] + 0.1 * generator.standard_normal((260, 3, 8, 8)), 0.01, 0.99)
    np.savez(tmp_path / "colour.npz", train=x[:200].astype("float32"), test=x[200:].astype("float32"))
    run = tmp_path / "run"
    common = ("--epochs", "2", "--batch-size", "50", "--score-samples", "5", "--quiet")
    result = cli(
        "train",
        "--dataset",
        f"npz:{tmp_path / 'colour.npz'}",
        "--model",
        "hierarchical",
        "--layers",
        "2",
        "--arch",
        "conv",
        "--hidden",
        "8,16",
        "--latent-dim",
        "2",
        *common,
        "--out",
        str(run),
    )
    assert result.returncode == 0, result.stderr
    assert "2-layer hierarchical VAE" in result.stdout
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["layers"]) == ("hierarchical", 2)
    result = cli("score", str(run), "--num-samples", "5", "--out", str(tmp_path / "scores"))
    assert result.returncode == 0, result.stderr
    with (tmp_path / "scores" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60 and all(np.isfinite(float(row["log_likelihood"])) for row in rows)
    for command in (("sample", "--num", "8"), ("latent", "manifold"), ("latent", "interpolate")):
        out = tmp_path / f"{command[-1]}.png"
        result = cli(*command, str(run), "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert out.read_bytes()[:4] == b"\x89PNG"
    refused = cli("train", "--dataset", f"npz:{tmp_path / 'colour.npz'}", "--layers", "2", *common)
    assert refused.returncode == 2 and "add --model hierarchical" in refused.stderr
