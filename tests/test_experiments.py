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
