"""Experiment scripts whose bars are cheap enough to check on every test run."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def summary(script: str, *args: str) -> dict[str, str]:
    """Run ``experiments/<script>`` and parse its final ``summary: key=value ...`` line."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("summary: ")
    return dict(pair.split("=", 1) for pair in last.removeprefix("summary: ").split())


def test_linear_vae_finds_pca_on_the_toy_points(tmp_path):
    values = summary("pca_vs_autoencoder.py", "--skip-mnist", "--out", str(tmp_path))
    assert values["pca_codes"] == "-0.63,-0.39,0.09,0.41,0.53"
    assert float(values["linear_vae_angle_deg"]) < 2.0
    assert (tmp_path / "toy.png").read_bytes()[:4] == b"\x89PNG"
    assert "| A | (-0.50, -0.40) | -0.63 |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    "options",
    [
        (),
        ("--model", "hierarchical", "--loss", "dreg", "--particles", "3"),
        ("--model", "hierarchical", "--free-bits", "2"),
    ],
    ids=["vae", "hierarchical-dreg", "hierarchical-free-bits"],
)
def test_mnist_nll_runs_with_the_vampprior_on_a_small_stand_in(tmp_path, options):
    import numpy as np

    rng = np.random.default_rng(0)
    patterns = rng.random((2, 28, 28)) > 0.5
    splits = {}
    for split, rows in (("train", 200), ("valid", 50), ("test", 40)):
        images = patterns[np.arange(rows) % 2] ^ (rng.random((rows, 28, 28)) < 0.05)
        splits[split] = images.astype(np.uint8)
    np.savez(tmp_path / "binarized_mnist.npz", **splits)
    values = summary(
        "mnist_nll.py",
        *("--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--prior", "vampprior"),
        *("--pseudo-inputs", "10", "--epochs", "3", "--num-samples", "20", "--hidden", "32", "--latent-dim", "4"),
        *options,
    )
    # 784 pixels, 5 % flipped around one of two patterns: at most 784 log 2 = 543 nats and at least
    # the flips' entropy, 784 H(0.05) = 156 nats
    assert 156 < float(values["test_nll"]) < 543
    assert values["epochs"] == "3" and values["model"] == (options[1] if options else "vae")
    assert values["free_bits"] == ("2" if "--free-bits" in options else "0")
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_hierarchical_samples_draws_both_models_on_frey_face(tmp_path):
    if not (ROOT.parent / "shared" / "data" / "frey-face").exists():
        pytest.skip("no Frey Face data in ../shared/data")
    values = summary(
        "hierarchical_samples.py",
        *("--datasets", "frey", "--train-rows", "200", "--epochs", "2", "--num-samples", "3", "--hidden", "32"),
        *("--warmup", "0,2", "--data-root", str(ROOT.parent / "shared" / "data"), "--out", str(tmp_path)),
    )
    single, hierarchical = float(values["frey_single_log_px"]), float(values["frey_hierarchical_log_px"])
    # 28 x 20 Bernoulli pixels after two epochs on 200 faces: near the uniform model's 560 log 2 nats
    assert all(-2 * 560 * math.log(2) < value < 0 for value in (single, hierarchical))
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| frey | hierarchical |"))
    tried = dict(entry.split(": ") for entry in row.split(" | ")[2].split(", "))
    kept = max(tried, key=lambda warmup: float(tried[warmup]))  # the best held-out ELBO is the one kept
    assert tried.keys() == {"0", "2"} and values["frey_hierarchical_warmup"] == kept
    assert f"| {kept} | 2 |" in row


def test_bench_adaptive_k_compares_adaptive_with_fixed_k(tmp_path):
    if not (ROOT.parent / "shared" / "data" / "mnist").exists():
        pytest.skip("no MNIST in ../shared/data")
    values = summary(
        "bench_adaptive_k.py",
        *("--data-dir", str(ROOT.parent / "shared" / "data" / "mnist"), "--train-size", "500", "--epochs", "1"),
        *("--test-size", "40", "--num-samples", "200", "--first-samples", "25", "--max-samples", "200"),
        *("--tolerance", "0.5", "--threads", "1", "--out", str(tmp_path)),
    )
    assert "| adaptive |" in (tmp_path / "results.md").read_text()
    mean_samples, at_max = float(values["mean_samples"]), int(values["at_max"])
    assert 25 <= mean_samples <= 200 and 0 <= at_max <= 40
    assert float(values["evaluation_ratio"]) == pytest.approx(200 / mean_samples, rel=0.01)
    gap = float(values["adaptive_log_px"]) - float(values["fixed_log_px"])
    assert float(values["adaptive_gap"]) == pytest.approx(gap, abs=2e-3)


ADBENCH = ROOT.parent / "shared" / "data" / "adbench"


def test_adbench_runs_ours_and_a_peer_on_one_tiny_set(tmp_path):
    if not (ADBENCH / "42_WBC.npz").exists():
        pytest.skip(f"no ADBench data in {ADBENCH}")
    values = summary(
        "adbench.py",
        *("--data-dir", str(ADBENCH), "--out", str(tmp_path), "--sets", "42_WBC", "--seeds", "1", "--peers", "ECOD"),
        *("--param", "members=1", "--param", "steps=5", "--param", "num_samples=4"),
    )
    keys = {"mean_auroc", "dev_mean_auroc", "report_mean_auroc", "iforest_mean_auroc", "iforest_dev_mean_auroc"}
    keys |= {"iforest_report_mean_auroc", "ecod_mean_auroc", "worst_gap", "worst_gap_set", "sets", "minutes"}
    assert keys | {"gap_WBC"} <= values.keys()
    assert values["sets"] == "1" and values["worst_gap_set"] == "WBC"
    assert 50 < float(values["iforest_mean_auroc"]) <= 100 and 50 < float(values["ecod_mean_auroc"]) <= 100
    assert (tmp_path / "auroc.png").read_bytes()[:4] == b"\x89PNG"
    assert "| WBC | REPORT | 700 |" in (tmp_path / "results.md").read_text()


def test_bench_detector_times_ours_and_isolation_forest(tmp_path):
    values = summary(
        "bench_detector.py",
        *("--rows", "300", "--columns", "5"),
        *("--param", "members=1", "--param", "steps=5", "--param", "num_samples=4"),
    )
    keys = {"detector_seconds", "fit_seconds", "score_seconds", "iforest_seconds", "ratio_to_iforest"}
    assert keys | {"rows", "columns"} <= values.keys()
    assert values["rows"] == "300" and values["columns"] == "5"
    assert float(values["detector_seconds"]) >= float(values["fit_seconds"]) > 0


def test_image_ood_tabulates_every_pair_of_the_three_sets(tmp_path):
    data = ROOT.parent / "shared" / "data"
    if not all((data / name).is_dir() for name in ("mnist", "fashion-mnist", "omniglot")):
        pytest.skip(f"MNIST, Fashion-MNIST or Omniglot missing from {data}")
    values = summary(
        "image_ood.py",
        *("--data-root", str(data), "--out", str(tmp_path), "--hidden", "16", "--latent-dim", "2"),
        *("--epochs", "1", "--min-steps", "1", "--held-out", "0.02", "--test-size", "40", "--num-samples", "3"),
        *("--reference-size", "60", "--regret-steps", "1"),
    )
    pairs = [f"typicality_{a}_{b}" for a in ("mnist", "fashion", "omniglot") for b in ("mnist", "fashion", "omniglot")]
    assert {key for key in pairs if key.split("_")[1] != key.split("_")[2]} <= values.keys()
    for method in ("is", "complexity", "regret", "typicality"):
        assert 0 <= float(values[f"auroc_{method}_min"]) <= float(values[f"auroc_{method}_mean"]) <= 1
    results = (tmp_path / "results.md").read_text()
    assert "| Omniglot → MNIST |" in results and "| Fashion-MNIST → own test set inverted |" in results
    assert (tmp_path / "typicality.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("held_out", ["0", "1000"])
def test_image_ood_needs_a_held_out_fraction(held_out):
    """0 would leave the typicality test nothing to fit; 1000 is the old count, not a fraction."""
    script = ROOT / "experiments" / "image_ood.py"
    result = subprocess.run([sys.executable, str(script), "--held-out", held_out], capture_output=True, text=True)
    assert result.returncode == 2 and f"{held_out} is not a number in (0, 1)" in result.stderr


def conditional_mnist(tmp_path: Path, *options: str) -> dict[str, str]:
    """conditional_mnist.py on 300 MNIST training images, semi-supervised runs only, tiny networks."""
    data = ROOT.parent / "shared" / "data" / "mnist"
    if not data.is_dir():
        pytest.skip(f"MNIST missing from {data}")
    return summary(
        "conditional_mnist.py",
        *("--data-dir", str(data), "--out", str(tmp_path), "--train-rows", "300", "--semi-supervised-only"),
        *("--labels-per-class", "2", "--m2-epochs", "1", "--hidden", "16", "--latent-dim", "2"),
        *options,
    )


def test_conditional_mnist_runs_only_the_adgm_draws_when_asked(tmp_path):
    values = conditional_mnist(
        tmp_path, "--semi-supervised", "adgm", "--draws", "2", "--auxiliary-dim", "2", "--classifier-arch", "mlp"
    )
    assert "gen_classifier_acc" not in values and "m2_acc_all" not in values  # no supervised, no all-labels run
    assert values["semi_supervised"] == "adgm" and values["draws"] == "2"
    assert 0 <= float(values["m2_acc_2_per_class"]) <= 1 and float(values["m2_acc_2_per_class_sd"]) >= 0
    assert math.isnan(float(values["m2_acc_100_per_class"]))
    results = (tmp_path / "results.md").read_text()
    assert "| ADGM (1 epochs) | 2 per class | q(y|x) test accuracy |" in results and "(2 draws)" in results


def test_conditional_mnist_trains_m2_on_the_codes_of_m1(tmp_path):
    values = conditional_mnist(tmp_path, "--features", "m1", "--m1-epochs", "1", "--m1-latent-dim", "3")
    assert values["features"] == "m1" and 0 <= float(values["m2_acc_2_per_class"]) <= 1
    results = (tmp_path / "results.md").read_text()
    assert "| M1 + M2 (1 epochs) | 2 per class |" in results and "q(y|x) a mlp network" in results
    assert "the 3-d codes of a VAE trained 1 epochs without labels" in results


def test_the_gpu_check_runs_every_stage_on_the_cpu(tmp_path):
    """experiments/gpu_check.sh as far as a CPU goes: its stages, with tiny sizes, on this Python."""
    if not (ROOT.parent / "shared" / "data" / "mnist").exists():
        pytest.skip("no MNIST in ../shared/data")
    environment = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_PYTHON": sys.executable,
        "GPU_CHECK_DATA": str(ROOT.parent / "shared" / "data"),
        "OUT": str(tmp_path),
    }
    script = ROOT / "experiments" / "gpu_check.sh"
    result = subprocess.run(
        ["bash", str(script), "--quick"], capture_output=True, text=True, timeout=600, env=environment
    )
    assert result.returncode == 0, result.stdout[-3000:]
    table = result.stdout.split("gpu_check on cpu")[1].splitlines()[1:]
    assert [row.split()[0] for row in table] == ["environment", "gpu-tests", "bench-train", "bench-score", "suite"]
    assert all(" rc=0 " in row for row in table), table
    score = dict(pair.split("=", 1) for pair in table[3].split("summary: ")[1].split())
    assert score["device"] == "cpu" and 0 < float(score["roofline_fraction"]) <= 1.5
    assert "fused_ratio_b32=" in table[2]


def test_bench_pythae_trains_both_and_scores_them_alike(tmp_path):
    pytest.importorskip("pythae")
    if not (ROOT.parent / "shared" / "data" / "mnist").exists():
        pytest.skip("no MNIST in ../shared/data")
    values = summary(
        "bench_pythae.py",
        *("--data-dir", str(ROOT.parent / "shared" / "data" / "mnist"), "--train-size", "600", "--epochs", "2"),
        *("--test-size", "30", "--num-samples", "40", "--check-images", "10", "--threads", "1", "--out", str(tmp_path)),
    )
    assert "| Pythae TrainingPipeline |" in (tmp_path / "results.md").read_text()
    assert float(values["captured_test_nll"]) == float(values["fit_test_nll"])  # the same training, bit for bit
    assert 100 < float(values["pythae_test_nll"]) < 544  # between a good model and 784 log 2
    assert float(values["epoch_ratio"]) == pytest.approx(
        float(values["fit_epoch_seconds"]) / float(values["pythae_epoch_seconds"]), rel=0.1
    )


def test_gan_vs_vae_puts_every_model_in_one_table(tmp_path):
    if not (ROOT.parent / "shared" / "data" / "mnist").exists():
        pytest.skip("no MNIST in ../shared/data")
    values = summary(
        "gan_vs_vae.py",
        *("--data-root", str(ROOT.parent / "shared" / "data"), "--sets", "mnist", "--seeds", "0"),
        *("--train-size", "512", "--vae-epochs", "1", "--gan-epochs", "1", "--classifier-epochs", "1"),
        *("--samples", "200", "--test-size", "20", "--num-samples", "5", "--threads", "1", "--out", str(tmp_path)),
    )
    table = (tmp_path / "results.md").read_text()
    for model in ("VAE", "VampPrior VAE", "hierarchical VAE", "DCGAN", "class-conditional DCGAN", "VAE-GAN"):
        assert f"| MNIST | {model} |" in table
    assert float(values["mnist_vae_fd"]) > 0 and 0 <= float(values["mnist_cgan_class_match"]) <= 1
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_gan_vs_vae_chooses_on_held_out_training_images(tmp_path):
    if not (ROOT.parent / "shared" / "data" / "mnist").exists():
        pytest.skip("no MNIST in ../shared/data")
    summary(
        "gan_vs_vae.py",
        *("--data-root", str(ROOT.parent / "shared" / "data"), "--sets", "mnist", "--seeds", "0"),
        *("--models", "vaegan", "--reference", "validation", "--vaegan-weight", "3"),
        *("--train-size", "256", "--vae-epochs", "1", "--classifier-epochs", "1"),
        *("--samples", "100", "--test-size", "10", "--num-samples", "5", "--threads", "1", "--out", str(tmp_path)),
    )
    table = (tmp_path / "results.md").read_text()
    assert "| MNIST | VAE-GAN |" in table and "| MNIST | VAE |" not in table
    assert "against as many held-out training images" in table and "VAE-GAN weight 3" in table
