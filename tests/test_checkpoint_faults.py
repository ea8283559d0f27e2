"""Every bad checkpoint or run directory is answered with a ValueError or FileNotFoundError that
names the file, the problem and the fix (issue 15), and good ones still load."""

from __future__ import annotations

import json
import pickle
import re
import zipfile

import pytest
import torch

from pyro_vae import checkpoint as checkpoint_module
from pyro_vae.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.cli.stock import build_pair, load_run
from pyro_vae.preprocessing import Preprocessor

CONFIG = {
    "x_shape": [6],
    "latent_dim": 2,
    "hidden": [8],
    "arch": "mlp",
    "likelihood": "bernoulli",
    "likelihood_options": {},
    "guide": "normal",
}
NOT_A_CHECKPOINT = "expected a run directory holding checkpoint.pt or a checkpoint file written by pyro-vae"


@pytest.fixture
def run_dir(tmp_path):
    """A run directory holding a stock checkpoint, as 'pyro-vae train' writes one."""
    model, guide = build_pair(CONFIG)
    preprocessing = Preprocessor("minmax").fit(torch.rand(20, 6)).state_dict()
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", model, guide, CONFIG, preprocessing)
    return tmp_path / "run"


def rewrite(path, **changes):
    """Save the payload of the checkpoint at ``path`` again, with ``changes`` (None removes an entry)."""
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    torch.save(payload, path)


def one_or_two_lines(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert len(message.splitlines()) <= 2 and "tensor(" not in message, message
    return message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("latent_dim", "ten", "'latent_dim' is 'ten', expected a positive integer"),
        ("hidden", 5, "'hidden' is 5, expected a non-empty list"),
        ("likelihood", "nonsense", "'likelihood' is 'nonsense', expected one of"),
        ("x_shape", [1, 6], "'x_shape' is [1, 6], expected a list of 1 (columns) or 3"),
        ("arch", ["mlp"], "'arch' is ['mlp'], expected one of"),
        ("conditional", "yes", "'conditional' is 'yes', expected true or false"),
    ],
)
def test_a_mistyped_config_key_is_named(run_dir, key, value, expected):
    rewrite(run_dir / "checkpoint.pt", config=json.dumps(CONFIG | {key: value}))
    with pytest.raises(ValueError, match="config key") as error:
        load_run(run_dir)
    message = one_or_two_lines(error)
    assert str(run_dir / "checkpoint.pt") in message and expected in message
    assert "not written by this version of 'pyro-vae train', or was edited" in message


def test_a_config_lacking_keys_names_them(run_dir):
    config = {key: value for key, value in CONFIG.items() if key not in ("latent_dim", "arch")}
    rewrite(run_dir / "checkpoint.pt", config=json.dumps(config))
    with pytest.raises(ValueError, match=r"config lacks \['arch', 'latent_dim'\]") as error:
        load_run(run_dir)
    assert str(run_dir) in one_or_two_lines(error)


def test_a_config_that_builds_no_model_is_a_value_error(run_dir):
    rewrite(run_dir / "checkpoint.pt", config=json.dumps(CONFIG | {"likelihood_options": {"no_such_option": 1}}))
    with pytest.raises(ValueError, match="its config builds no model") as error:
        load_run(run_dir)
    assert str(run_dir) in one_or_two_lines(error)


def test_a_config_that_does_not_fit_the_weights_says_so(run_dir):
    rewrite(run_dir / "checkpoint.pt", config=json.dumps(CONFIG | {"latent_dim": 3}))
    with pytest.raises(ValueError, match="its config does not fit its weights") as error:
        load_run(run_dir)
    assert "another shape" in one_or_two_lines(error)


@pytest.mark.parametrize(("text", "problem"), [("{not json", "not valid JSON"), ("[1, 2]", "a JSON list")])
def test_a_malformed_config_is_a_value_error(run_dir, text, problem):
    rewrite(run_dir / "checkpoint.pt", config=text)
    with pytest.raises(ValueError, match=problem) as error:
        load_checkpoint(run_dir / "checkpoint.pt")
    assert str(run_dir) in one_or_two_lines(error)


@pytest.mark.parametrize("entry", ["model_state", "config", "preprocessing"])
def test_a_payload_lacking_an_entry_names_it(run_dir, entry):
    rewrite(run_dir / "checkpoint.pt", **{entry: None})
    with pytest.raises(ValueError, match=rf"lacks the checkpoint entries \['{entry}'\]") as error:
        load_run(run_dir)
    assert "restore an earlier copy" in one_or_two_lines(error)


def test_a_payload_entry_of_the_wrong_type_is_named(run_dir):
    rewrite(run_dir / "checkpoint.pt", guide_state=[1, 2])
    with pytest.raises(ValueError, match="holds a list as its 'guide_state'"):
        load_checkpoint(run_dir / "checkpoint.pt")
    rewrite(run_dir / "checkpoint.pt", guide_state={"weight": "heavy"})
    with pytest.raises(ValueError, match=r"non-tensors in its 'guide_state': \['weight'\]"):
        load_checkpoint(run_dir / "checkpoint.pt")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("data.csv", b"a,b\n1,2\n"),
        ("notes.txt", b"hello world\n"),
        ("empty.pt", b""),
        ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(64)),
        ("archive.zip", None),
    ],
)
def test_a_file_that_is_no_checkpoint_says_what_is_expected(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a pyro-vae checkpoint") as error:
        load_run(path)
    message = one_or_two_lines(error)
    assert str(path) in message and NOT_A_CHECKPOINT in message


def test_a_directory_without_a_checkpoint_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is a directory holding no checkpoint\.pt") as error:
        load_run(tmp_path)
    assert str(tmp_path) in one_or_two_lines(error)
    with pytest.raises(FileNotFoundError, match="is a directory, not a checkpoint file"):
        load_checkpoint(tmp_path)


def test_a_torch_file_of_something_else_says_what_is_expected(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="a torch file of something else") as error:
        load_run(path)
    assert NOT_A_CHECKPOINT in one_or_two_lines(error)


def test_non_finite_weights_are_refused_by_name(run_dir):
    path = run_dir / "checkpoint.pt"
    state = torch.load(path, weights_only=True)["model_state"]
    name = next(key for key, value in state.items() if value.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[:2] = torch.tensor([float("nan"), float("inf")])
    rewrite(path, model_state=state)
    with pytest.raises(ValueError, match="non-finite weights") as error:
        load_checkpoint(path)
    message = one_or_two_lines(error)
    assert f"model_state['{name}'] (2 values)" in message and "resume from an earlier copy" in message


def test_non_finite_store_parameters_are_refused(run_dir):
    rewrite(run_dir / "checkpoint.pt", pyro_params={"scale": torch.tensor([1.0, float("-inf")])})
    with pytest.raises(ValueError, match=r"pyro_params\['scale'\] \(1 values\)"):
        load_checkpoint(run_dir / "checkpoint.pt")


def test_a_malformed_preprocessing_state_is_a_value_error(run_dir):
    rewrite(run_dir / "checkpoint.pt", preprocessing={"method": "minmax"})
    with pytest.raises(ValueError, match="preprocessing lacks") as error:
        load_run(run_dir)
    assert str(run_dir) in one_or_two_lines(error)


class _Prints:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_zip_file_holding_code_is_refused_for_that_not_called_corrupted(tmp_path, capsys):
    """With pickle protocol 4, torch's refusal does not name the global; the scan of the archive's
    pickle must."""
    path = tmp_path / "crafted.pt"
    torch.save({"format": "pyro-vae-checkpoint", "x": _Prints()}, path, pickle_protocol=4)
    with pytest.raises(ValueError, match="refused: it holds Python objects other than tensors") as error:
        load_run(path)
    assert "corrupted" not in one_or_two_lines(error)
    assert "pwned" not in capsys.readouterr().out


def test_a_damaged_file_is_still_called_corrupted(run_dir):
    path = run_dir / "checkpoint.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2)[:-3])
    with pytest.raises(ValueError, match="truncated or corrupted") as error:
        load_checkpoint(path)
    message = one_or_two_lines(error)
    assert "refused" not in message and "restore an earlier copy" in message


@pytest.mark.parametrize("device", ["gpu", "cuda:7"] if torch.cuda.is_available() else ["gpu", "cuda"])
def test_a_device_that_does_not_exist_is_named(run_dir, device):
    with pytest.raises(ValueError, match="there is no such device here; use --device cpu") as error:
        load_checkpoint(run_dir / "checkpoint.pt", map_location=device)
    assert repr(device) in one_or_two_lines(error)


def test_saves_use_unique_temporary_names(tmp_path, monkeypatch):
    names = []
    real_save = torch.save

    def recording_save(payload, handle):
        names.append(handle.name)
        real_save(payload, handle)

    monkeypatch.setattr(torch, "save", recording_save)
    for _ in range(2):
        save_checkpoint(tmp_path / "checkpoint.pt", None, None, {})
    assert len(set(names)) == 2
    assert [item.name for item in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_failed_save_removes_its_unique_temporary_file(tmp_path, monkeypatch):
    names = []

    def failing_save(payload, handle):
        names.append(handle.name)
        handle.write(b"part")
        raise OSError("no space left")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="no space left"):
        save_checkpoint(tmp_path / "checkpoint.pt", None, None, {})
    assert re.fullmatch(r".*/\.checkpoint\.pt\.[0-9a-f]{16}\.tmp", names[0]), names
    assert list(tmp_path.iterdir()) == []


def test_the_code_scan_reads_the_pickle_inside_a_zip_archive(tmp_path):
    path = tmp_path / "crafted.pt"
    torch.save({"x": _Prints()}, path)
    assert checkpoint_module._is_pickle_calling_code(path)
    torch.save({"x": torch.zeros(2)}, path)
    assert not checkpoint_module._is_pickle_calling_code(path)
