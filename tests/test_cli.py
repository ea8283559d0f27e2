"""The pyro-vae command line, end to end in subprocesses, as a user runs it."""

from __future__ import annotations

import csv
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.cli.run_folder import RUN_FILES
from tests.conftest import DEVICES, shared_data

COMMANDS = ("train", "train-gan", "evaluate", "sample", "reconstruct", "style", "score", "fit-detector", "latent")


def pyro_vae(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyro_vae", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "digits"
    result = pyro_vae(
        "train", "--dataset", "digits", "--epochs", "3", "--score-samples", "20", "--quiet", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "wrote to" in result.stdout
    return out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "pyro-vae"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command):
    result = pyro_vae(command, "--help")
    assert result.returncode == 0
    assert "usage: pyro-vae " + command in result.stdout
    assert "(default: None)" not in result.stdout
    if command not in ("train", "fit-detector", "latent"):
        assert "run directory" in result.stdout


def test_train_help_documents_every_option_with_its_default():
    from pyro_vae.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        assert action.help, f"{action.option_strings} has no help"
    text = pyro_vae("train", "--help").stdout
    for default in ("--epochs EPOCHS", "passes over the training data (default: 50)", "(default: 128)"):
        assert default in " ".join(text.split()), default


def test_train_writes_the_whole_run(run_dir):
    expected = set(RUN_FILES) - {"style_transfer.png", "losses.png"}  # a plain VAE: no class figures, no GAN losses
    assert expected == {path.name for path in run_dir.iterdir()}  # the lock file is gone too
    config = json.loads((run_dir / "config.json").read_text())
    assert config["likelihood"] == "continuous-bernoulli"
    assert config["x_shape"] == [1, 8, 8]
    with (run_dir / "history.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3
    with (run_dir / "novelty.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 359  # the digits test split
    scores = [float(row["log_likelihood"]) for row in rows]
    assert scores == sorted(scores), "most novel first"
    for path in run_dir.glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_prints_and_writes_json(run_dir, tmp_path):
    result = pyro_vae("evaluate", str(run_dir), "--num-samples", "50", "--json", str(tmp_path / "e.json"))
    assert result.returncode == 0, result.stderr
    assert "ELBO" in result.stdout and "log p(x)" in result.stdout
    results = json.loads((tmp_path / "e.json").read_text())
    assert results["count"] == 359
    assert results["log_likelihood"] >= results["elbo"]


def test_evaluate_adapts_k_per_datum_with_a_tolerance(run_dir, tmp_path, conditional_run):
    result = pyro_vae(
        "evaluate", str(run_dir), "--tolerance", "0.3", "--num-samples", "20", "--max-samples", "160",
        "--json", str(tmp_path / "e.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "K adapted per datum: 20 first" in result.stdout
    results = json.loads((tmp_path / "e.json").read_text())
    assert results["count"] == 359 and 20 <= results["mean_num_samples"] <= 160
    assert results["tolerance"] == 0.3 and 0 <= results["tolerance_unmet"] <= 359
    assert results["log_likelihood"] >= results["elbo"]
    refused = pyro_vae("evaluate", str(conditional_run), "--tolerance", "0.3")
    assert refused.returncode == 2 and "unconditional" in refused.stderr and "Traceback" not in refused.stderr
    unbounded = pyro_vae("evaluate", str(run_dir), "--max-samples", "100")
    assert unbounded.returncode == 2 and "--tolerance" in unbounded.stderr


def test_sample_and_reconstruct_write_pngs(run_dir, tmp_path):
    for command in ("sample", "reconstruct"):
        out = tmp_path / f"{command}.png"
        result = pyro_vae(command, str(run_dir / "checkpoint.pt"), "--num", "12", "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert out.read_bytes()[:4] == b"\x89PNG"


def test_score_other_split(run_dir, tmp_path):
    result = pyro_vae("score", str(run_dir), "--split", "train", "--num-samples", "5", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    with (tmp_path / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1438
    assert {"rank", "index", "label", "log_likelihood", "elbo", "pareto_k", "tail_probability", "novel"} <= set(rows[0])
    assert (tmp_path / "scores_vs_training.png").is_file()


def anomaly_table(path: Path) -> Path:
    """An NPZ like ADBench's: 2-D structured inliers (y = 0) and off-structure outliers (y = 1)."""
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(600, 2))
    x = latent @ rng.normal(size=(2, 6)) + 0.05 * rng.normal(size=(600, 6))
    y = np.zeros(600, dtype=np.int64)
    x[:30] += 1.5 * rng.normal(size=(30, 6))
    y[:30] = 1
    np.savez(path, X=x * 100.0, y=y)
    return path


def test_fit_detector_then_score_with_labels(tmp_path):
    data = anomaly_table(tmp_path / "table.npz")
    out = tmp_path / "detector"
    fitted = pyro_vae("fit-detector", str(data), "--out", str(out), "--quiet")  # the defaults
    assert fitted.returncode == 0, fitted.stderr
    assert "600 rows x 6 columns" in fitted.stdout
    again = pyro_vae("fit-detector", str(data), "--out", str(out), "--epochs", "1", "--quiet")
    assert again.returncode == 2 and "--overwrite" in again.stderr

    scored = pyro_vae("score", str(out), "--data", str(data), "--netcdf")
    assert scored.returncode == 0, scored.stderr
    assert "AUROC" in scored.stdout
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 600
    scores = [float(row["log_likelihood"]) for row in rows]
    assert scores == sorted(scores)  # most novel first
    # The outliers come first: 17 of the first 30 at the defaults (23 after 500 steps), by chance 1.5.
    assert sum(int(row["label"]) for row in rows[:30]) >= 15
    assert all(0 < float(row["tail_probability"]) <= 1 for row in rows)
    metrics = json.loads((out / "scores_metrics.json").read_text())
    assert metrics["auroc"] > 0.95
    assert 0.05 < metrics["flagged"] / 600 < 0.2  # contamination 0.1 of the same data
    for name in ("scores_roc.png", "scores_vs_training.png", "scores_histogram.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert (out / "scores.nc").read_bytes()[:4] == b"\x89HDF"


def test_score_with_a_detector_needs_data_of_its_columns(tmp_path):
    data = anomaly_table(tmp_path / "table.npz")
    out = tmp_path / "detector"
    assert pyro_vae("fit-detector", str(data), "--out", str(out), "--epochs", "2", "--quiet").returncode == 0
    no_data = pyro_vae("score", str(out))
    assert no_data.returncode == 2 and "--data" in no_data.stderr
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("a,b\n1,2\n3,4\n")
    wrong = pyro_vae("score", str(out), "--data", str(narrow))
    assert wrong.returncode == 2 and "expecting 6 features" in wrong.stderr and "Traceback" not in wrong.stderr


def test_errors_are_one_clear_line(run_dir, tmp_path):
    missing = pyro_vae("evaluate", str(tmp_path / "no-such-run"))
    assert missing.returncode == 2
    assert "not found" in missing.stderr and "Traceback" not in missing.stderr
    again = pyro_vae("train", "--epochs", "1", "--out", str(run_dir), "--quiet")
    assert again.returncode == 2
    assert "--overwrite" in again.stderr
    no_data = pyro_vae(
        "train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--quiet", "--out", str(tmp_path / "m")
    )
    assert no_data.returncode == 2
    assert "--data-dir" in no_data.stderr and "--download" in no_data.stderr
    other = tmp_path / "other"
    pyro_vae("train", "--epochs", "1", "--latent-dim", "3", "--score-samples", "2", "--quiet", "--out", str(other))
    (other / "checkpoint.pt").write_bytes(b"not a checkpoint")
    corrupted = pyro_vae("sample", str(other))
    assert corrupted.returncode == 2
    assert "not a readable checkpoint" in corrupted.stderr


def test_train_on_mnist_from_the_shared_idx_files(tmp_path):
    data_dir = shared_data("mnist")
    out = tmp_path / "mnist"
    result = pyro_vae(
        "train", "--dataset", "mnist", "--data-dir", str(data_dir), "--epochs", "1", "--likelihood", "bernoulli",
        "--score-samples", "2", "--quiet", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["x_shape"] == [1, 28, 28]
    metrics = json.loads((out / "metrics.json").read_text())
    # One epoch of a Bernoulli VAE on binarized MNIST is far below the -543 nats of a coin flip per pixel.
    assert metrics["test_elbo"] > -200


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "semi"
    result = pyro_vae(
        "train", "--conditional", "--labels-per-class", "10", "--epochs", "3", "--score-samples", "3",
        "--quiet", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def test_semi_supervised_training_reports_both_classifiers(conditional_run):
    config = json.loads((conditional_run / "config.json").read_text())
    assert config["conditional"] and config["labels_per_class"] == 10 and config["num_classes"] == 10
    assert config["training"]["loss"] == "auto"  # fit sums the missing labels out (TraceEnum_ELBO) by itself
    metrics = json.loads((conditional_run / "metrics.json").read_text())
    # Ten classes: chance is 0.1. After 3 epochs with 10 labels per class q(y | x) reached 0.50,
    # 0.61 and 0.76 (seeds 0, 1, 2; 2026-12-02); a classifier that ignores x, or is scored
    # against shuffled labels, stays near 0.1.
    assert metrics["classifier_accuracy"] > 0.3
    with (conditional_run / "novelty.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"predicted", "log_likelihood_given_label", "label_posterior"} <= set(rows[0])
    # The generative classifier is still at chance after 3 epochs (0.09, 0.12, 0.11 for those
    # seeds), so it is held to its own per-datum predictions: the reported accuracy is the share
    # of the test digits in novelty.csv whose predicted class is their label.
    assert len(rows) == 359  # the digits' test split
    agreeing = sum(row["predicted"] == row["label"] for row in rows) / len(rows)
    assert metrics["generative_classifier_accuracy"] == pytest.approx(agreeing, abs=1e-6)
    assert (conditional_run / "style_transfer.png").exists()


def test_class_conditional_commands(conditional_run, tmp_path):
    drawn = pyro_vae("sample", str(conditional_run), "--class", "7", "--num", "9", "--out", str(tmp_path / "7.png"))
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "7.png").read_bytes()[:4] == b"\x89PNG"
    bad = pyro_vae("sample", str(conditional_run), "--class", "12")
    assert bad.returncode == 2 and "0..9" in bad.stderr
    styled = pyro_vae("style", str(conditional_run), "--num", "4", "--out", str(tmp_path / "style.png"))
    assert styled.returncode == 0, styled.stderr
    evaluated = pyro_vae("evaluate", str(conditional_run), "--num-samples", "3")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "log p(x | label)" in evaluated.stdout and "generative classifier accuracy" in evaluated.stdout


def test_conditional_options_need_labels(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("a,b\n" + "\n".join(f"{i},{i % 3}" for i in range(30)))
    result = pyro_vae("train", "--dataset", f"csv:{table}", "--conditional", "--quiet", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "needs labels" in result.stderr
    result = pyro_vae("train", "--labels-per-class", "5", "--quiet", "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "add --conditional" in result.stderr


@pytest.mark.parametrize("correction", ["complexity", "regret", "typicality"])
def test_score_with_an_ood_correction(run_dir, tmp_path, correction):
    result = pyro_vae(
        "score", str(run_dir), "--correction", correction, "--num-samples", "5", "--reference-size", "100",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (tmp_path / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    scores = [float(row["score"]) for row in rows]
    assert scores == sorted(scores)
    assert any(abs(float(row["score"]) - float(row["log_likelihood"])) > 1 for row in rows)  # corrected
    assert json.loads((tmp_path / "scores_metrics.json").read_text())["count"] == 359


def test_score_ranks_images_by_the_typicality_test_by_default(run_dir, tmp_path):
    result = pyro_vae("score", str(run_dir), "--num-samples", "5", "--reference-size", "100", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "typicality" in result.stdout
    assert "Pareto k̂ not computed (K = 5" in result.stdout  # too few weights to fit a tail: no flag at all
    plain = pyro_vae(
        "score", str(run_dir), "--num-samples", "5", "--correction", "none", "--out", str(tmp_path / "plain")
    )
    assert plain.returncode == 0, plain.stderr
    typical = {row["index"]: float(row["score"]) for row in csv.DictReader((tmp_path / "scores.csv").open())}
    likely = {row["index"]: float(row["score"]) for row in csv.DictReader((tmp_path / "plain" / "scores.csv").open())}
    assert typical.keys() == likely.keys() and typical != likely


def test_the_typicality_test_needs_held_out_images(tmp_path):
    out = tmp_path / "no_validation"
    trained = pyro_vae(
        "train", "--epochs", "1", "--validation", "0", "--score-samples", "2", "--quiet", "--out", str(out)
    )
    assert trained.returncode == 0, trained.stderr
    result = pyro_vae("score", str(out), "--num-samples", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--validation 0.1" in result.stderr and "--correction complexity" in result.stderr


def test_latent_figures(run_dir, tmp_path):
    for view, options in {"interpolate": ["--pairs", "2"], "traverse": ["--index", "3"], "scatter": []}.items():
        out = tmp_path / f"{view}.png"
        result = pyro_vae("latent", view, str(run_dir), "--out", str(out), *options)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes()[:4] == b"\x89PNG"
    not_2d = pyro_vae("latent", "manifold", str(run_dir), "--out", str(tmp_path / "m.png"))
    assert not_2d.returncode == 2 and "--latent-dim 2" in not_2d.stderr
    flat = tmp_path / "flat"
    trained = pyro_vae(
        "train", "--latent-dim", "2", "--epochs", "1", "--score-samples", "2", "--quiet", "--out", str(flat)
    )
    assert trained.returncode == 0, trained.stderr
    manifold = pyro_vae("latent", "manifold", str(flat), "--points", "5")
    assert manifold.returncode == 0, manifold.stderr
    assert (flat / "latent_manifold.png").is_file()


def _epoch_saved(run: Path) -> int:
    from pyro_vae.checkpoint import load_checkpoint

    try:
        return load_checkpoint(run / "checkpoint.pt").training["epoch"]
    except (FileNotFoundError, ValueError):
        return 0


@pytest.mark.parametrize("device", DEVICES)
def test_killed_training_resumes_to_the_same_parameters(tmp_path, device):
    from pyro_vae.checkpoint import load_checkpoint

    options = ["--epochs", "6", "--batch-size", "16", "--score-samples", "2", "--quiet", "--seed", "4"]
    options += ["--device", device]
    reference = pyro_vae("train", *options, "--out", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "pyro_vae", "train", *options, "--out", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _epoch_saved(killed) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no chance to clean up, in the middle of an epoch
    process.wait()
    saved = _epoch_saved(killed)
    assert 2 <= saved < 6, "the kill must land before the run finished"
    assert not (killed / "metrics.json").exists()

    resumed = pyro_vae("train", "--resume", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {saved} of 6" in resumed.stdout
    expected, actual = (load_checkpoint(path / "checkpoint.pt") for path in (tmp_path / "reference", killed))
    for part in ("model_state", "guide_state"):
        reference_state, resumed_state = getattr(expected, part), getattr(actual, part)
        assert reference_state.keys() == resumed_state.keys()
        for name, value in reference_state.items():
            assert torch.equal(value, resumed_state[name]), f"{part} {name} differs after resuming"


def test_resume_needs_a_resumable_run(tmp_path):
    missing = pyro_vae("train", "--resume", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_ctrl_c_keeps_the_last_epoch_and_says_how_to_continue(tmp_path):
    run = tmp_path / "interrupted"
    command = [sys.executable, "-m", "pyro_vae", "train", "--epochs", "5000", "--batch-size", "16", "--quiet"]
    # A shell started in the background (nohup make test &) passes SIGINT on as ignored, and Python
    # then keeps ignoring it: give the child the default disposition, as a terminal would.
    process = subprocess.Popen(
        [*command, "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while _epoch_saved(run) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert f"pyro-vae train --resume {run}" in stderr and "Traceback" not in stderr
    assert 1 <= _epoch_saved(run) < 5000


def test_two_process_training_matches_one_process(tmp_path):
    """torchrun with 2 processes (gloo) and --distributed: each process trains on half of every
    minibatch and the gradients are averaged, so with a deterministic guide (no random draws)
    the parameters and ELBOs equal the single-process run's up to float rounding; only rank 0
    writes the run."""
    from pyro_vae.checkpoint import load_checkpoint

    options = ["--dataset", "digits", "--guide", "delta", "--epochs", "3", "--batch-size", "64", "--quiet"]
    options += ["--score-samples", "2", "--seed", "3"]
    single = pyro_vae("train", *options, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    command += ["-m", "pyro_vae", "train", *options, "--out", str(tmp_path / "two"), "--distributed"]
    double = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr
    assert double.stdout.count("wrote to") == 1 and "in 2 processes" in double.stdout

    histories = [np.loadtxt(tmp_path / run / "history.csv", delimiter=",", skiprows=1) for run in ("one", "two")]
    np.testing.assert_allclose(histories[0][:, 1:3], histories[1][:, 1:3], rtol=1e-5)
    assert histories[0][-1, 2] > histories[0][0, 2] + 10  # it trained: the held-out ELBO rose
    # Summing two half-minibatch gradients rounds differently from one whole-minibatch gradient,
    # and over 3 epochs an element here and there (a ReLU at its kink, a near-zero Adam moment)
    # amplifies that to ~1e-3; nearly all parameters agree to rounding, and none by more.
    expected, actual = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("one", "two"))
    for part in ("model_state", "guide_state"):
        for name, value in getattr(expected, part).items():
            difference = (getattr(actual, part)[name] - value).abs()
            assert (difference <= 1e-5 + 1e-4 * value.abs()).float().mean() > 0.97, name
            assert difference.max() < 1e-2, name


def test_distributed_needs_torchrun(tmp_path, monkeypatch, capsys):
    """Without torchrun's environment, --distributed is a user error: one line naming the command
    to run instead, exit status 2, no traceback."""
    from pyro_vae.cli import main

    for variable in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    status = main(["train", "--epochs", "1", "--distributed", "--quiet", "--out", str(tmp_path / "run")])
    stderr = capsys.readouterr().err
    assert status == 2
    assert stderr.startswith("pyro-vae train: error: ") and stderr.count("\n") == 1
    assert "torchrun --nproc_per_node=N -m pyro_vae train ... --distributed" in stderr
    assert not (tmp_path / "run").exists()


def test_unreliable_estimates_are_flagged_against_the_training_datas_own_k_hat(run_dir, tmp_path):
    result = pyro_vae(
        "score", str(run_dir), "--correction", "none", "--num-samples", "100", "--reference-size", "300",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "scores_metrics.json").read_text())
    with (tmp_path / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    k_hat = np.array([float(row["pareto_k"]) for row in rows])
    assert metrics["unreliable"] == int((k_hat > metrics["unreliable_cut"]).sum())
    # A 3-epoch VAE: many estimates miss PSIS's absolute cut (0.5 at K = 100), the training data's too,
    # so the cut is the training data's 99 % quantile, and the note says so.
    assert metrics["unreliable_cut"] > 0.5 and "the training data's 99% quantile" in result.stdout
    assert "seldom brings k̂ under the cut" in result.stdout
    # Test images of the training distribution: few above it, far fewer than above the absolute cut.
    assert metrics["unreliable"] / metrics["count"] < 0.1
    assert (k_hat > 0.5).sum() > 2 * metrics["unreliable"]
