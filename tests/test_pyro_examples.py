"""Pyro's own VAE examples (``../shared/pyro-examples``), loaded by path and used as written:
trained by ``fit``, scored, decoded, checkpointed. Only the porting edits the README lists are
applied (the auxiliary classifier joined with ``pyro_vae.auxiliary``, ``label_batches="pure"``,
``site="latent"`` and ``x_shape=`` for the latent tools)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import config_enumerate

import pyro_vae
from pyro_vae.conditional import class_scores
from pyro_vae.diagnostics import importance_scores
from pyro_vae.guides import AmortizedNormal
from pyro_vae.latent import decode, encode, reconstruct
from pyro_vae.models import VAE
from pyro_vae.scoring import adaptive_log_likelihood
from pyro_vae.typicality import STATISTICS, TypicalityTest

EXAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "pyro-examples"
pytestmark = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="../shared/pyro-examples is not beside the project")


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def examples(monkeypatch_module):
    """The two example modules, with what they import for plotting and downloads stubbed."""
    utils = types.ModuleType("utils")
    utils.__path__ = []
    plots = types.ModuleType("utils.vae_plots")
    for name in ("mnist_test_tsne", "plot_llk", "plot_vae_samples", "mnist_test_tsne_ssvae"):
        setattr(plots, name, None)
    plots.plot_conditional_samples_ssvae = None
    visdom = types.ModuleType("visdom")
    visdom.Visdom = None
    for name, module in {"utils": utils, "utils.vae_plots": plots, "visdom": visdom}.items():
        monkeypatch_module.setitem(sys.modules, name, module)
    monkeypatch_module.setitem(sys.modules, "utils.custom_mlp", _load("utils.custom_mlp", EXAMPLES / "custom_mlp.py"))
    monkeypatch_module.setitem(
        sys.modules, "utils.mnist_cached", _load("utils.mnist_cached", EXAMPLES / "mnist_cached.py")
    )
    return _load("pyro_example_vae", EXAMPLES / "vae.py"), _load("pyro_example_ss_vae", EXAMPLES / "ss_vae_M2.py")


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def grey_images(rows: int, seed: int) -> torch.Tensor:
    """Grey-level 784-pixel images (not binary): what vae.py scores with validate_args=False."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(4, 784, generator=generator)
    which = torch.randint(0, 4, (rows,), generator=generator)
    return (prototypes[which] * 0.8 + 0.2 * torch.rand(rows, 784, generator=generator)).clamp(0, 1)


def test_tutorial_vae_trains_scores_decodes_and_round_trips(examples, tmp_path):
    vae_module, _ = examples
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = vae_module.VAE(z_dim=4, hidden_dim=32)
    x = grey_images(300, seed=1)
    # model(x) without y or size; "obs" and "latent", not "x" and "z"; Bernoulli(validate_args=False)
    history = pyro_vae.fit(vae.model, vae.guide, x, epochs=4, batch_size=64, seed=0)
    assert history.estimator == "FastSVI"
    assert history.train_elbo[-1] > history.train_elbo[0]
    elbo = pyro_vae.elbo(vae.model, vae.guide, x[:20], num_samples=2)
    ll = pyro_vae.log_likelihood(vae.model, vae.guide, x[:20], num_samples=50)
    assert elbo.shape == ll.shape == (20,) and torch.isfinite(ll).all()
    assert (ll - elbo).mean() > 0  # the importance-sampled bound is the tighter one
    assert importance_scores(vae.model, vae.guide, x[:20], num_samples=50).pareto_k.shape == (20,)

    z = encode(vae.guide, x[:5])
    loc, _ = vae.encoder(x[:5])
    assert torch.equal(z, loc)  # the site is found in the guide: "latent"
    assert torch.allclose(reconstruct(vae.model, vae.guide, x[:5]), vae.decoder(loc))
    with pytest.raises(ValueError, match=r"no latent site 'z'.*\['latent'\]"):
        decode(vae.model, z, x_shape=(784,))
    with pytest.raises(ValueError, match=r"cannot be run without data.*x_shape="):
        decode(vae.model, z, site="latent")
    assert torch.allclose(decode(vae.model, z, site="latent", x_shape=(784,)), vae.decoder(z))

    path = pyro_vae.save_checkpoint(tmp_path / "vae.pt", vae, vae)
    pyro.clear_param_store()
    fresh = vae_module.VAE(z_dim=4, hidden_dim=32)
    pyro_vae.load_checkpoint(path, fresh, fresh)
    pyro.set_rng_seed(5)
    again = pyro_vae.elbo(fresh.model, fresh.guide, x[:20], num_samples=2)
    pyro.set_rng_seed(5)
    pyro.clear_param_store()
    assert torch.equal(again, pyro_vae.elbo(fresh.model, fresh.guide, x[:20], num_samples=2))


def test_training_and_scoring_agree_on_the_support(examples):
    """A stock Bernoulli validates its values; the example's validate_args=False does not, and
    neither fit nor the scores check what the program said not to."""
    vae_module, _ = examples
    vae = vae_module.VAE(z_dim=2, hidden_dim=8)
    x = grey_images(40, seed=2)
    pyro_vae.fit(vae.model, vae.guide, x, epochs=1, batch_size=20, validation=None)
    assert torch.isfinite(pyro_vae.elbo(vae.model, vae.guide, x)).all()
    model, guide = VAE.build((784,), 2, (8,)), AmortizedNormal.build((784,), 2, (8,))
    for score in (
        lambda: pyro_vae.fit(model, guide, x, epochs=1, validation=None),
        lambda: pyro_vae.elbo(model, guide, x),
    ):
        with pytest.raises(ValueError, match="outside the support of the model's likelihood Bernoulli"):
            score()


def semi_supervised(ss_module, classes: int = 3, features: int = 20):
    """Pyro's M2 as its example builds it, with its auxiliary classifier joined to the model."""
    ss = ss_module.SSVAE(
        output_size=classes,
        input_size=features,
        z_dim=2,
        hidden_layers=[16],
        config_enum="parallel",
        aux_loss_multiplier=20.0,
    )

    def model(xs, ys=None):
        ss.model(xs, ys)
        if ys is not None:
            with pyro_vae.auxiliary():
                ss.model_classify(xs, ys)

    return ss, model, config_enumerate(ss.guide, "parallel", expand=True)


def labelled_data(rows: int, classes: int = 3, features: int = 20, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(classes, features, generator=generator)
    labels = torch.randint(0, classes, (rows,), generator=generator)
    x = (centres[labels] + 0.1 * torch.randn(rows, features, generator=generator)).clamp(0, 1)
    one_hot = torch.nn.functional.one_hot(labels, classes).float()
    one_hot[rows // 5 :] = float("nan")  # a fifth labelled: NaN rows are missing labels
    return x, one_hot, labels


def test_m2_trains_in_pure_batches_and_classifies(examples, tmp_path):
    _, ss_module = examples
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    ss, model, guide = semi_supervised(ss_module)
    x, y, labels = labelled_data(300)
    history = pyro_vae.fit(model, guide, (x, y), epochs=6, batch_size=30, label_batches="pure", seed=0, lr=3e-3)
    assert history.estimator == "TraceEnum_ELBO"  # the guide enumerates y; the estimator said so itself
    assert all(torch.isfinite(torch.tensor(history.train_elbo)))
    elbo = pyro_vae.elbo(model, guide, x[:30], num_samples=2)  # labels unknown: y is proposed by q(y | x)
    assert elbo.shape == (30,) and torch.isfinite(elbo).all()
    scores = class_scores(model, guide, x[:60], num_classes=3, num_samples=10)  # OneHotCategorical prior
    assert scores.log_px_given_y.shape == (60, 3)
    assert torch.allclose(scores.log_prior, torch.full((3,), 1 / 3).log())
    accuracy = (scores.predict() == labels[:60]).float().mean()
    assert accuracy > 0.6  # three well-separated clusters; chance is 1/3

    path = pyro_vae.save_checkpoint(tmp_path / "m2.pt", ss, ss)
    pyro.clear_param_store()
    fresh, fresh_model, fresh_guide = semi_supervised(ss_module)
    pyro_vae.load_checkpoint(path, fresh, fresh)
    pyro.set_rng_seed(3)
    first = class_scores(fresh_model, fresh_guide, x[:10], num_classes=3, num_samples=5).log_px_given_y
    pyro.set_rng_seed(3)
    assert torch.equal(first, class_scores(model, guide, x[:10], num_classes=3, num_samples=5).log_px_given_y)


def test_auxiliary_terms_train_but_never_score(examples):
    _, ss_module = examples
    ss, model, guide = semi_supervised(ss_module)
    x, y, _ = labelled_data(12)
    labelled = torch.nan_to_num(y[:2]), x[:2]
    pyro.set_rng_seed(1)
    with_aux = pyro_vae.elbo(model, guide, labelled[1], labelled[0])
    pyro.set_rng_seed(1)
    without = pyro_vae.elbo(lambda xs, ys=None: ss.model(xs, ys), guide, labelled[1], labelled[0])
    assert torch.equal(with_aux, without)
    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
    pyro.set_rng_seed(1)
    trained = loss.loss(model, guide, labelled[1], labelled[0])
    pyro.set_rng_seed(1)
    assert trained != loss.loss(lambda xs, ys=None: ss.model(xs, ys), guide, labelled[1], labelled[0])


@pytest.mark.parametrize("loss", ["iwae", "dreg"])
def test_tutorial_vae_trains_with_the_importance_weighted_objectives(examples, loss):
    """Pyro's own VAE (pyro.module, model(x) without size) under the per-datum IWAE bound."""
    vae_module, _ = examples
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = vae_module.VAE(z_dim=4, hidden_dim=32)
    x = grey_images(200, seed=2)
    history = pyro_vae.fit(vae.model, vae.guide, x, loss=loss, num_particles=5, epochs=3, batch_size=50, seed=0)
    assert history.estimator == {"iwae": "ImportanceWeightedELBO", "dreg": "DoublyReparameterizedELBO"}[loss]
    assert history.train_elbo[-1] > history.train_elbo[0]


def test_free_bits_floor_the_tutorial_vae_per_datum_of_its_plate(examples):
    """vae.py's plate has no subsample size: fit's minibatch scaling makes each latent term stand
    for N data, and the floor is λ per datum of those N (not per minibatch row): with λ far above
    its KL term the training objective is the plain one less about λ."""
    vae_module, _ = examples
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = vae_module.VAE(z_dim=4, hidden_dim=32)
    history = pyro_vae.fit(vae.model, vae.guide, grey_images(300, seed=1), epochs=1, batch_size=64, free_bits=1000.0)
    assert history.estimator == "FreeBitsELBO"
    assert -1000 < history.val_elbo[0] < 0  # the validation ELBO is the plain one
    assert history.val_elbo[0] - 1100 < history.train_elbo[0] < history.val_elbo[0] - 900


def test_free_bits_refuse_pyros_m2_by_its_discrete_label_site(examples):
    _, ss_module = examples
    pyro.clear_param_store()
    _, model, guide = semi_supervised(ss_module)
    x, y, _ = labelled_data(300)
    with pytest.raises(ValueError, match=r"site 'y' .* has no rsample; train with free_bits=0"):
        pyro_vae.fit(model, guide, (x, y), epochs=1, batch_size=30, label_batches="pure", free_bits=1.0)


def test_adaptive_k_on_the_tutorial_vae_is_per_row_deterministic(examples):
    """Pyro's own VAE (its plate has no subsample size, its latent is "latent"): adaptive K with
    common noise gives a row the same estimate and the same K alone as in a batch."""
    vae_module, _ = examples
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = vae_module.VAE(z_dim=4, hidden_dim=32)
    x = grey_images(120, seed=3)
    pyro_vae.fit(vae.model, vae.guide, x, epochs=2, batch_size=40, seed=0, progress=False)
    found = adaptive_log_likelihood(
        vae.model, vae.guide, x[:12], tolerance=0.05, first_samples=20, max_samples=320, common_noise=4
    )
    assert (found.num_samples >= 20).all() and (found.num_samples <= 320).all()
    alone = adaptive_log_likelihood(
        vae.model, vae.guide, x[7:8], tolerance=0.05, first_samples=20, max_samples=320, common_noise=4
    )
    assert torch.equal(alone.log_likelihood[0], found.log_likelihood[7])
    assert alone.num_samples[0] == found.num_samples[7]


def test_the_captured_step_trains_the_tutorial_vae_as_the_eager_step_does(examples, monkeypatch):
    """Pyro's own VAE, recorded and replayed: the same history and parameters, bit for bit."""
    from pyro_vae.captured_step import CapturedSteps

    replays = []
    original = CapturedSteps._replay
    monkeypatch.setattr(CapturedSteps, "_replay", lambda self, *a: replays.append(1) or original(self, *a))
    vae_module, _ = examples
    x = grey_images(200, seed=2)
    runs = []
    for capture in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = vae_module.VAE(z_dim=4, hidden_dim=32)
        history = pyro_vae.fit(vae.model, vae.guide, x, epochs=3, batch_size=50, seed=0, capture=capture)
        runs.append((history.train_elbo, {name: value.clone() for name, value in vae.state_dict().items()}))
    # 180 training rows: steps of 50, 50, 50 and 30 per epoch; each shape steps eagerly, then is recorded
    assert len(replays) == 3 * 4 - 2 * 2
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(value, runs[1][1][name]) for name, value in runs[0][1].items())


def test_the_typicality_test_takes_the_tutorial_vae_as_written(examples):
    """Pyro's VAE flattens the images itself and observes "obs" as Bernoulli(validate_args=False):
    the test's statistics (its tail over the 784 values of that site included) work through it,
    a score is a row's own, and noise scores below the held-out images."""
    vae_module, _ = examples
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = vae_module.VAE(z_dim=4, hidden_dim=32)
    images = grey_images(400, seed=5).reshape(-1, 1, 28, 28)
    pyro_vae.fit(vae.model, vae.guide, images[:300], epochs=3, batch_size=50, seed=0, progress=False)
    test = TypicalityTest(vae.model, vae.guide, num_samples=8).fit(images[300:])
    statistics = test.statistics(images[:20])
    assert statistics.shape == (20, len(STATISTICS)) and np.isfinite(statistics).all()
    assert (statistics[:, STATISTICS.index("tail")] < 0).all(), "Bernoulli log-probabilities are negative"
    scores = test.score(images[:20])
    assert np.array_equal(test.score(images[4:5]), scores[4:5])
    noise = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert np.median(test.score(noise)) < np.quantile(test.reference_, 0.01)
