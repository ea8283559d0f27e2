"""``pyro-vae train-gan`` and ``pyro-vae sample`` on its runs, as a user runs them."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli.run_folder import RUN_FILES
from tests.test_cli import pyro_vae

QUICK = ("--epochs", "2", "--batch-size", "64", "--hidden", "8,16", "--quiet")


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gan") / "digits-gan"
    result = pyro_vae("train-gan", *QUICK, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


def test_a_gan_run_holds_its_files_and_samples(gan_run, tmp_path):
    written = {"checkpoint.pt", "config.json", "history.csv", "losses.png", "samples.png", "metrics.json"}
    assert written == {path.name for path in gan_run.iterdir()}  # the lock file is gone too
    assert written <= set(RUN_FILES)  # so --overwrite guards them
    with open(gan_run / "history.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["epoch"] for row in rows] == ["1", "2"] and float(rows[-1]["discriminator_loss"]) > 0
    config = json.loads((gan_run / "config.json").read_text())
    assert config["model"] == "gan" and config["x_shape"] == [1, 8, 8] and config["num_classes"] is None
    out = tmp_path / "more.png"
    result = pyro_vae("sample", str(gan_run), "--num", "9", "--seed", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_a_conditional_patchgan_run_samples_a_class(tmp_path):
    out = tmp_path / "conditional"
    result = pyro_vae("train-gan", *QUICK, "--conditional", "--discriminator", "patch", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "class-conditional DCGAN (patch discriminator)" in result.stdout
    assert json.loads((out / "config.json").read_text())["num_classes"] == 10
    for options in (["--class", "3", "--num", "8"], []):  # one class, or a row per class
        png = tmp_path / f"samples{len(options)}.png"
        sampled = pyro_vae("sample", str(out), *options, "--out", str(png))
        assert sampled.returncode == 0, sampled.stderr
        assert png.read_bytes()[:4] == b"\x89PNG"
    wrong = pyro_vae("sample", str(out), "--class", "10")
    assert wrong.returncode == 2 and "--class must be in 0..9" in wrong.stderr


def test_the_other_commands_refuse_a_gan_run_with_a_message(gan_run, tmp_path):
    for command in (["evaluate", str(gan_run)], ["reconstruct", str(gan_run)], ["train", "--resume", str(gan_run)]):
        result = pyro_vae(*command)
        assert result.returncode == 2 and "Traceback" not in result.stderr, command
        assert "is a GAN run (written by 'pyro-vae train-gan')" in result.stderr
    no_class = pyro_vae("sample", str(gan_run), "--class", "1")
    assert no_class.returncode == 2 and "--class needs a GAN trained with --conditional" in no_class.stderr
    vae = tmp_path / "vae"
    assert pyro_vae("train", "--epochs", "1", "--score-samples", "2", "--quiet", "--out", str(vae)).returncode == 0
    not_gan = pyro_vae("train-gan", "--resume", str(vae))
    assert not_gan.returncode == 2 and "is not a GAN run" in not_gan.stderr
    changed = pyro_vae("train-gan", "--resume", str(gan_run), "--epochs", "5")
    assert changed.returncode == 2 and "--epochs cannot be given with --resume" in changed.stderr
    again = pyro_vae("train-gan", *QUICK, "--out", str(gan_run))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_train_gan_refuses_tables(tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("a,b\n" + "".join(f"{i},{i % 3}\n" for i in range(40)))
    result = pyro_vae("train-gan", "--dataset", f"csv:{table}", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "trains DCGANs on images" in result.stderr


def _epoch_saved(run: Path) -> int:
    try:
        return load_checkpoint(run / "checkpoint.pt").training["epoch"]
    except (FileNotFoundError, ValueError):
        return 0


def test_a_killed_gan_run_resumes_to_the_same_weights(tmp_path):
    options = ["--epochs", "6", "--batch-size", "16", "--hidden", "8,16", "--quiet", "--seed", "2"]
    reference = pyro_vae("train-gan", *options, "--out", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "pyro_vae", "train-gan", *options, "--out", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _epoch_saved(killed) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # mid-epoch, no clean-up
    process.wait()
    saved = _epoch_saved(killed)
    assert 2 <= saved < 6, "the kill must land before the run finished"
    resumed = pyro_vae("train-gan", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {saved} of 6" in resumed.stdout
    expected, actual = (load_checkpoint(path / "checkpoint.pt") for path in (tmp_path / "reference", killed))
    for part in ("model_state", "guide_state"):  # the generator's and the discriminator's
        for name, value in getattr(expected, part).items():
            assert torch.equal(value, getattr(actual, part)[name]), f"{part} {name} differs after resuming"
