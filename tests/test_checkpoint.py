"""Checkpoints round-trip exactly and refuse what they must refuse."""

from __future__ import annotations

import pickle

import pyro
import pytest
import torch

import pyro_vae
from pyro_vae.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VAE
from pyro_vae.preprocessing import Preprocessor


def pair(latent_dim=4):
    return VAE.build((6,), latent_dim, (16,), "mlp", "bernoulli"), AmortizedNormal.build((6,), latent_dim, (16,))


@pytest.fixture
def trained(tmp_path):
    x = (torch.rand(300, 6) > 0.5).float()
    model, guide = pair()
    pyro_vae.fit(model, guide, x, epochs=3, progress=False)
    preprocessor = Preprocessor("minmax").fit(torch.rand(50, 6) * 10)
    path = save_checkpoint(
        tmp_path / "run" / "checkpoint.pt", model, guide, {"latent_dim": 4}, preprocessor.state_dict()
    )
    return model, guide, x, path, preprocessor


def test_round_trip_gives_identical_scores(trained):
    model, guide, x, path, preprocessor = trained
    fresh_model, fresh_guide = pair()
    checkpoint = load_checkpoint(path, fresh_model, fresh_guide)
    assert checkpoint.config == {"latent_dim": 4}
    scores = []
    for m, g in ((model, guide), (fresh_model, fresh_guide)):
        pyro.set_rng_seed(11)
        scores.append(pyro_vae.log_likelihood(m, g, x[:50], num_samples=30))
    assert torch.equal(scores[0], scores[1])
    restored = Preprocessor.from_state_dict(checkpoint.preprocessing)
    probe = torch.rand(5, 6) * 10
    assert torch.equal(restored.transform(probe), preprocessor.transform(probe))
    assert restored.method == "minmax"
    assert not list(path.parent.glob(".*.tmp")), "the temporary file of the atomic write is left behind"


def test_an_untrained_pair_scores_differently(trained):
    """The round-trip test above would pass vacuously if loading did nothing; it does not."""
    model, guide, x, *_ = trained
    fresh_model, fresh_guide = pair()
    pyro.set_rng_seed(11)
    before = pyro_vae.log_likelihood(model, guide, x[:50], num_samples=30)
    pyro.set_rng_seed(11)
    untrained = pyro_vae.log_likelihood(fresh_model, fresh_guide, x[:50], num_samples=30)
    assert not torch.equal(before, untrained)


def test_function_models_must_pass_their_modules(tmp_path):
    def model(x, y=None, size=None):
        pass

    with pytest.raises(TypeError, match=r"pass the nn\.Module"):
        save_checkpoint(tmp_path / "c.pt", model, None)
    assert not (tmp_path / "c.pt").exists()


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_truncated_file(trained):
    path = trained[3]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_checkpoint(path)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a pyro-vae checkpoint"):
        load_checkpoint(path)


class _RunsCode:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    _RunsCode.marker = tmp_path / "code-ran"
    path = tmp_path / "malicious.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "pyro-vae-checkpoint", "payload": _RunsCode()}, handle)
    torch.save({"format": "pyro-vae-checkpoint", "payload": _RunsCode()}, tmp_path / "malicious2.pt")
    for candidate in (path, tmp_path / "malicious2.pt"):
        with pytest.raises(ValueError, match="refused"):
            load_checkpoint(candidate)
    assert not _RunsCode.marker.exists()


def test_checkpoint_of_another_model_is_refused(trained):
    path = trained[3]
    wider_model, wider_guide = pair(latent_dim=7)
    with pytest.raises(ValueError, match="another shape"):
        load_checkpoint(path, wider_model, wider_guide)
    conv_model = VAE.build((1, 8, 8), 4, (8,), "conv", "bernoulli")
    with pytest.raises(ValueError, match="another architecture"):
        load_checkpoint(path, conv_model)


def test_a_save_that_dies_half_way_leaves_the_old_checkpoint_readable(trained, monkeypatch):
    model, guide, _, path, _ = trained
    before = path.read_bytes()

    def dying_save(payload, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, guide, {"new": True})
    assert path.read_bytes() == before
    assert load_checkpoint(path).config != {"new": True}
    assert sorted(item.name for item in path.parent.iterdir()) == ["checkpoint.pt"]  # no temporary left
