"""The README's failure rule, walked: every subcommand against every kind of bad input gets one or
two lines that name the file and the problem, exit status 2, and no traceback.

The commands run in this process through :func:`pyro_vae.cli.main`, exactly as the console script
calls it; the signal tests run the console script in a subprocess.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae.cli import main
from pyro_vae.cli.errors import USER_ERROR
from pyro_vae.cli.run_folder import RUN_FILES, RunLock


def _run(argv: list[str], capsys) -> tuple[int, str]:
    status = main([str(part) for part in argv])
    return status, capsys.readouterr().err


def _assert_clear(status: int, err: str, names: str) -> None:
    """Exit status 2; one or two lines besides warnings, naming ``names``; no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip() and ": warning: " not in line]
    assert status == USER_ERROR, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert 1 <= len(lines) <= 2, err
    assert names in err, f"the message does not name {names!r}: {err}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A digits run and a conditional digits run, one epoch each."""
    root = tmp_path_factory.mktemp("faults")
    made = {}
    for name, extra in (("plain", []), ("conditional", ["--conditional"])):
        made[name] = root / name
        argv = ["train", "--epochs", "1", "--score-samples", "2", "--quiet", "--out", made[name], *extra]
        assert main([str(part) for part in argv]) == 0
    return made


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _npz(path: Path, **arrays) -> Path:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _table(rows: int = 30, columns: int = 64) -> np.ndarray:
    return np.random.default_rng(0).random((rows, columns))


def _csv_table(path: Path, table: np.ndarray) -> Path:
    return _csv(path, "\n".join(",".join(f"{value:.4f}" for value in row) for row in table) + "\n")


def _image_folder(folder: Path, bad: Callable[[Path], Path]) -> Path:
    """A folder of good 8 x 8 PNGs and one bad file, returned as the bad file's path."""
    folder.mkdir()
    for index in range(5):
        Image.fromarray(np.full((8, 8), 40 * index, dtype=np.uint8)).save(folder / f"good{index}.png")
    return bad(folder)


def _truncated_png(folder: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(buffer, format="PNG")
    return _write(folder / "cut.png", buffer.getvalue()[:40])


def _empty_folder(tmp: Path) -> Path:
    (tmp / "nothing").mkdir()
    return tmp / "nothing"


def _npy_renamed(tmp: Path) -> Path:
    np.save(tmp / "array.npy", _table())
    return (tmp / "array.npy").rename(tmp / "array.npz")


def _truncated_npz(tmp: Path) -> Path:
    good = _npz(tmp / "good.npz", X=_table())
    return _write(tmp / "cut.npz", good.read_bytes()[:300])


def _ragged(tmp: Path) -> Path:
    lines = [",".join(["0.5"] * 64)] * 10
    lines[6] = ",".join(["0.5"] * 60)
    return _csv(tmp / "ragged.csv", "\n".join(lines) + "\n")


def _with_cell(tmp: Path, name: str, cell: str) -> Path:
    lines = [",".join(["0.5"] * 64)] * 10
    lines[4] = ",".join(["0.5"] * 10 + [cell] + ["0.5"] * 53)
    return _csv(tmp / name, "\n".join(lines) + "\n")


def _nonfinite(tmp: Path) -> Path:
    table = _table(60)
    table[[3, 50], 7] = -np.inf
    return _csv_table(tmp / "infinite.csv", table)


def _directory_named_csv(tmp: Path) -> Path:
    (tmp / "x.csv").mkdir()
    return tmp / "x.csv"


# Each kind of bad data: how to make it (in a fresh folder), and its spec prefix.
BAD_DATA: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing file": (lambda tmp: tmp / "absent.csv", "csv"),
    "missing folder": (lambda tmp: tmp / "absent", "images"),
    "zero-byte npz": (lambda tmp: _write(tmp / "empty.npz", b""), "npz"),
    "truncated npz": (_truncated_npz, "npz"),
    "npy renamed npz": (_npy_renamed, "npz"),
    "text file named npz": (lambda tmp: _write(tmp / "words.npz", b"not an archive\n"), "npz"),
    "object array": (lambda tmp: _npz(tmp / "objects.npz", X=np.array([{"a": 1}] * 30, dtype=object)), "npz"),
    "complex array": (lambda tmp: _npz(tmp / "complex.npz", X=_table() * (1 + 1j)), "npz"),
    "1-D array": (lambda tmp: _npz(tmp / "flat.npz", X=np.arange(64.0)), "npz"),
    "string array": (lambda tmp: _npz(tmp / "strings.npz", X=np.array([["a"] * 64] * 30)), "npz"),
    "labels of the wrong length": (lambda tmp: _npz(tmp / "labels.npz", X=_table(), y=np.zeros(7)), "npz"),
    "zero-byte csv": (lambda tmp: _write(tmp / "empty.csv", b""), "csv"),
    "header-only csv": (lambda tmp: _csv(tmp / "header.csv", ",".join(f"c{i}" for i in range(64)) + "\n"), "csv"),
    "ragged rows": (_ragged, "csv"),
    "empty cell": (lambda tmp: _with_cell(tmp, "hole.csv", ""), "csv"),
    "word in a cell": (lambda tmp: _with_cell(tmp, "word.csv", "seven"), "csv"),
    "NaN and infinite values": (_nonfinite, "csv"),
    "binary file named csv": (lambda tmp: _write(tmp / "binary.csv", bytes(range(256)) * 8), "csv"),
    "folder named csv": (_directory_named_csv, "csv"),
    "empty image folder": (_empty_folder, "images"),
    "text file named png": (lambda tmp: _image_folder(tmp / "fake", lambda f: _csv(f / "fake.png", "hello")), "images"),
    "truncated png": (lambda tmp: _image_folder(tmp / "cut", _truncated_png), "images"),
}


def _data_commands(runs: dict[str, Path], spec: str, tmp: Path) -> dict[str, list]:
    """Every subcommand that reads data, given ``spec``."""
    plain = runs["plain"]
    commands = {
        "train": ["train", "--dataset", spec, "--epochs", "1", "--quiet", "--out", tmp / "train"],
        "evaluate": ["evaluate", plain, "--data", spec, "--num-samples", "2"],
        "reconstruct": ["reconstruct", plain, "--data", spec, "--out", tmp / "r.png"],
        "style": ["style", runs["conditional"], "--data", spec, "--out", tmp / "s.png"],
        "score": ["score", plain, "--data", spec, "--num-samples", "2", "--out", tmp / "score"],
        "fit-detector": ["fit-detector", spec, "--out", tmp / "detector", "--steps", "2", "--members", "1"],
    }
    for view in ("interpolate", "traverse", "scatter"):
        commands[f"latent {view}"] = ["latent", view, plain, "--data", spec, "--out", tmp / "l.png"]
    return commands


@pytest.mark.parametrize("kind", list(BAD_DATA))
def test_every_data_command_names_the_bad_file(kind, runs, tmp_path, capsys):
    make, prefix = BAD_DATA[kind]
    bad = make(tmp_path)  # the file the message must name; a bad image is named, its folder read
    spec = f"{prefix}:{bad.parent if bad.suffix == '.png' else bad}"
    for command, argv in _data_commands(runs, spec, tmp_path).items():
        status, err = _run(argv, capsys)
        assert status == USER_ERROR, f"{command} on {kind}: {err}"
        _assert_clear(status, err, bad.name)


def test_nonfinite_values_are_named_at_their_rows_in_the_file(runs, tmp_path, capsys):
    """-inf in rows 3 and 50 of the file (counting from 0): those numbers, not positions in a
    shuffled split."""
    spec = f"csv:{_nonfinite(tmp_path)}"
    for command, argv in _data_commands(runs, spec, tmp_path).items():
        _, err = _run(argv, capsys)
        assert "[3, 50]" in err, f"{command}: {err}"


# Each kind of bad run: how to make it from a good run directory (copied into ``tmp``).
def _edited_checkpoint(run: Path, tmp: Path, name: str, edit: Callable[[dict], None]) -> Path:
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    edit(payload)
    (tmp / name).mkdir()
    torch.save(payload, tmp / name / "checkpoint.pt")
    return tmp / name


def _nan_weight(payload: dict) -> None:
    name = next(iter(payload["model_state"]))
    payload["model_state"][name] = torch.full_like(payload["model_state"][name], float("nan"))


def _config_edit(**changes) -> Callable[[dict], None]:
    def edit(payload: dict) -> None:
        payload["config"] = json.dumps(json.loads(payload["config"]) | changes)

    return edit


def _stored_option(**changes) -> Callable[[dict], None]:
    """An edit of the command-line options the run stored (for --resume)."""

    def edit(payload: dict) -> None:
        config = json.loads(payload["config"])
        config["arguments"] |= changes
        payload["config"] = json.dumps(config)

    return edit


class _Crafted:
    """Unpickling this calls ``open(PATH, "w")``: a file that appears if the checkpoint is run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def _crafted(run: Path, tmp: Path) -> Path:
    return _edited_checkpoint(run, tmp, "crafted", lambda payload: payload.update(trap=_Crafted(tmp / "pwned")))


BAD_RUNS: dict[str, Callable[[Path, Path], Path]] = {
    "missing run": lambda run, tmp: tmp / "nothing",
    "folder without a checkpoint": lambda run, tmp: _empty_folder(tmp),
    "csv given as a run": lambda run, tmp: _csv_table(tmp / "table.csv", _table()),
    "garbage checkpoint": lambda run, tmp: _write(tmp / "garbage.pt", b"not a checkpoint at all"),
    "truncated checkpoint": lambda run, tmp: _write(tmp / "cut.pt", (run / "checkpoint.pt").read_bytes()[:2000]),
    "zip of something else": lambda run, tmp: _zip(tmp / "other.pt"),
    "crafted pickle": _crafted,
    "NaN weights": lambda run, tmp: _edited_checkpoint(run, tmp, "nan-weights", _nan_weight),
    "malformed config": lambda run, tmp: _edited_checkpoint(
        run, tmp, "malformed", lambda payload: payload.update(config="{not json")
    ),
    "mistyped config": lambda run, tmp: _edited_checkpoint(run, tmp, "mistyped", _config_edit(latent_dim="ten")),
    "config of another shape": lambda run, tmp: _edited_checkpoint(run, tmp, "reshaped", _config_edit(hidden=5)),
}


def _zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    return path


def _run_commands(run: Path, tmp: Path) -> dict[str, list]:
    """Every subcommand that reads a run."""
    commands = {
        "evaluate": ["evaluate", run, "--num-samples", "2"],
        "sample": ["sample", run, "--out", tmp / "s.png"],
        "reconstruct": ["reconstruct", run, "--out", tmp / "r.png"],
        "style": ["style", run, "--out", tmp / "st.png"],
        "score": ["score", run, "--num-samples", "2", "--out", tmp / "score"],
        "train --resume": ["train", "--resume", run, "--quiet"],
        "train-gan --resume": ["train-gan", "--resume", run, "--quiet"],
    }
    for view in ("manifold", "interpolate", "traverse", "scatter"):
        commands[f"latent {view}"] = ["latent", view, run, "--out", tmp / "l.png"]
    return commands


@pytest.mark.parametrize("kind", list(BAD_RUNS))
def test_every_run_command_names_the_bad_checkpoint(kind, runs, tmp_path, capsys):
    bad = BAD_RUNS[kind](runs["plain"], tmp_path)
    for command, argv in _run_commands(bad, tmp_path).items():
        status, err = _run(argv, capsys)
        assert status == USER_ERROR, f"{command} on {kind}: {err}"
        _assert_clear(status, err, bad.name)
    assert not (tmp_path / "pwned").exists(), "the crafted checkpoint ran code"


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gan-faults") / "gan"
    argv = ["train-gan", "--epochs", "1", "--hidden", "8,16", "--quiet", "--out", out]
    assert main([str(part) for part in argv]) == 0
    return out


def _without(key: str) -> Callable[[dict], None]:
    def edit(payload: dict) -> None:
        config = json.loads(payload["config"])
        del config[key]
        payload["config"] = json.dumps(config)

    return edit


BAD_GAN_RUNS: dict[str, Callable[[dict], None]] = {
    "NaN weights": _nan_weight,
    "mistyped config": _config_edit(latent_dim="ten"),
    "unknown discriminator": _config_edit(discriminator="nonsense"),
    "config of another shape": _config_edit(hidden=[4, 4]),
    "config of too small an image": _config_edit(x_shape=[1, 2, 2]),
    "config without a key": _without("num_classes"),
    "stored option out of range": _stored_option(epochs=-4),
}


@pytest.mark.parametrize("kind", list(BAD_GAN_RUNS))
def test_gan_run_commands_name_the_bad_checkpoint(kind, gan_run, tmp_path, capsys):
    bad = _edited_checkpoint(gan_run, tmp_path, "bad-gan", BAD_GAN_RUNS[kind])
    commands = {"sample": ["sample", bad, "--out", tmp_path / "s.png"], "resume": ["train-gan", "--resume", bad]}
    for command, argv in commands.items():
        if kind == "stored option out of range" and command == "sample":
            continue  # sample reads no training options
        status, err = _run(argv, capsys)
        _assert_clear(status, err, "bad-gan")


@pytest.mark.parametrize("option", [{"epochs": -4}, {"hidden": "wide"}, {"likelihood": "nonsense"}])
def test_resume_checks_the_options_the_run_stored(option, runs, tmp_path, capsys):
    bad = _edited_checkpoint(runs["plain"], tmp_path, "options", _stored_option(**option))
    status, err = _run(["train", "--resume", bad, "--quiet"], capsys)
    _assert_clear(status, err, f"--{next(iter(option))}")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--out", "{file}/run"],
        ["sample", "{run}", "--out", "{file}/samples.png"],
        ["evaluate", "{run}", "--json", "{file}/results.json"],
        ["score", "{run}", "--out", "{file}/report"],
        ["latent", "scatter", "{run}", "--out", "{file}/scatter.png"],
        ["fit-detector", "{csv}", "--out", "{file}/detector"],
        ["sample", "{run}", "--out", "{folder}"],
    ],
)
def test_an_output_below_a_file_is_refused_before_any_work(argv, runs, tmp_path, capsys):
    a_file = _write(tmp_path / "a_file", b"x")
    table = _csv_table(tmp_path / "table.csv", _table())
    (tmp_path / "folder").mkdir()
    names = {"file": a_file, "run": runs["plain"], "csv": table, "folder": tmp_path / "folder"}
    status, err = _run([part.format(**names) for part in argv], capsys)
    _assert_clear(status, err, "a_file" if "{file}" in " ".join(argv) else "folder")
    assert "not a folder" in err or "is a folder" in err


# Run folders


def test_a_users_files_in_out_are_kept_without_overwrite(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("config.json", "history.csv", "metrics.json", "notes.txt"):
        (out / name).write_text(f"the user's {name}")
    status, err = _run(["train", "--epochs", "1", "--quiet", "--out", out], capsys)
    _assert_clear(status, err, "--overwrite")
    for name in ("config.json", "history.csv", "metrics.json", "notes.txt"):
        assert (out / name).read_text() == f"the user's {name}"
    assert not (out / "checkpoint.pt").exists()


def test_overwrite_replaces_only_what_a_run_writes(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("old")
    (out / "notes.txt").write_text("the user's notes")
    status, _ = _run(["train", "--epochs", "1", "--score-samples", "2", "--quiet", "--overwrite", "--out", out], capsys)
    assert status == 0
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert json.loads((out / "config.json").read_text())["dataset"] == "digits"
    written = {path.name for path in out.iterdir()} - {"notes.txt"}
    assert written <= set(RUN_FILES), f"the run wrote files RUN_FILES does not list: {written - set(RUN_FILES)}"


def test_a_locked_run_folder_is_refused_at_once(tmp_path, capsys):
    out = tmp_path / "busy"
    with RunLock(out):
        status, err = _run(["train", "--epochs", "1", "--quiet", "--out", out], capsys)
    _assert_clear(status, err, "another pyro-vae process")
    assert not (out / "checkpoint.pt").exists()
    with RunLock(out):  # released by the refused command and by the block above
        pass


def test_a_full_disk_is_found_before_training(tmp_path, capsys, monkeypatch):
    import shutil

    from pyro_vae.cli import run_folder

    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    out = tmp_path / "full"
    status, err = _run(["train", "--epochs", "1", "--quiet", "--out", out], capsys)
    _assert_clear(status, err, "MiB free")
    assert not (out / "checkpoint.pt").exists()


def test_a_read_only_out_is_found_before_training(tmp_path, capsys, monkeypatch):
    from pyro_vae.cli import run_folder

    def refuse(**options):
        raise PermissionError(13, "Permission denied", str(options["dir"]))

    monkeypatch.setattr(run_folder.tempfile, "NamedTemporaryFile", refuse)
    status, err = _run(["train", "--epochs", "1", "--quiet", "--out", tmp_path / "ro"], capsys)
    _assert_clear(status, err, "writable")
    assert not (tmp_path / "ro" / "checkpoint.pt").exists()


def _started_run(tmp_path: Path, capsys, table: np.ndarray) -> tuple[Path, Path]:
    data = _csv_table(tmp_path / "data.csv", table)
    out = tmp_path / "run"
    status, err = _run(
        ["train", "--dataset", f"csv:{data}", "--epochs", "2", "--score-samples", "2", "--quiet", "--out", out], capsys
    )
    assert status == 0, err
    return data, out


def test_resume_refuses_changed_data_unless_told(tmp_path, capsys):
    table = _table(80, 5)
    data, out = _started_run(tmp_path, capsys, table)
    table[0, 0] += 1.0
    _csv_table(data, table)
    status, err = _run(["train", "--resume", out, "--quiet"], capsys)
    _assert_clear(status, err, "--accept-changed-data")
    status, err = _run(["train", "--resume", out, "--quiet", "--accept-changed-data"], capsys)
    assert status == 0, err


def test_resume_refuses_options_it_would_ignore(tmp_path, capsys):
    _, out = _started_run(tmp_path, capsys, _table(80, 5))
    status, err = _run(["train", "--resume", out, "--epochs", "9", "--lr", "0.1"], capsys)
    _assert_clear(status, err, "--epochs, --lr")


# Numbers


def test_extreme_finite_values_get_finite_scores_and_rank_most_novel(tmp_path, capsys):
    table = np.random.default_rng(1).normal(size=(200, 5))
    _, out = _started_run(tmp_path, capsys, table)
    new = np.random.default_rng(2).normal(size=(20, 5))
    new[3], new[4], new[6, 2] = 1e30, -1e30, 3e38
    data = _csv(tmp_path / "new.csv", "\n".join(",".join(map(repr, row.tolist())) for row in new) + "\n")
    status, err = _run(["score", out, "--data", data, "--num-samples", "5", "--out", tmp_path / "s"], capsys)
    assert status == 0, err
    with (tmp_path / "s" / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {int(row["index"]) for row in rows[:3]} == {3, 4, 6}
    assert all(np.isfinite(float(row["log_likelihood"])) for row in rows)
    assert all(row["novel"] == "1" for row in rows[:3])


def test_a_score_that_is_not_a_number_ranks_most_novel_and_is_flagged():
    from pyro_vae.cli.novelty import _annotate, _ranked
    from pyro_vae.cli.report import novelty_order, rankable

    scores = np.array([-1.0, np.nan, -5.0, -np.inf])
    assert novelty_order(scores).tolist() == [1, 3, 2, 0]
    assert rankable(scores).tolist() == [-1.0, -6.0, -5.0, -6.0]
    rows = _ranked([{"index": index, "log_likelihood": value} for index, value in enumerate(scores)])
    _annotate(rows, np.array([-3.0, -2.0, -1.0]), threshold=-10.0, k_cut=0.5)
    assert [row["index"] for row in rows] == [1, 3, 2, 0]
    assert [(row["novel"], row["unscorable"]) for row in rows] == [(1, 1), (1, 1), (0, 0), (0, 0)]


# Signals


def _wait_for_epoch(run: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if torch.load(run / "checkpoint.pt", weights_only=True)["training"]["epoch"] >= 1:
                return
        except (FileNotFoundError, RuntimeError, EOFError, KeyError, TypeError):
            pass
        time.sleep(0.05)


def test_sigterm_exits_143_with_the_resume_command(tmp_path):
    run = tmp_path / "terminated"
    command = [sys.executable, "-m", "pyro_vae", "train", "--epochs", "5000", "--batch-size", "16", "--quiet"]
    process = subprocess.Popen([*command, "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(run, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert f"pyro-vae train --resume {run}" in stderr and "Traceback" not in stderr
    assert not list(run.glob("*.tmp")), "a temporary file was left behind"
