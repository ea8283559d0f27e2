"""Experiment scripts whose bars are cheap enough to check on every test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_mnist_nll_runs_with_the_vampprior_on_a_small_stand_in(tmp_path):
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
    )
    # 784 pixels, 5 % flipped around one of two patterns: at most 784 log 2 = 543 nats and at least
    # the flips' entropy, 784 H(0.05) = 156 nats
    assert 156 < float(values["test_nll"]) < 543
    assert values["epochs"] == "3"
    assert (tmp_path / "run" / "checkpoint.pt").exists()
