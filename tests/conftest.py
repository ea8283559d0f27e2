"""Shared fixtures: the bundled digits, the shared real data folder, a clean Pyro state."""

from __future__ import annotations

from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae.data import DataSplits, load_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped where there is no CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (experiments/gpu_check.sh runs these on one)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


# A device parameter: the test runs on the CPU everywhere and on CUDA where there is a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    """Each test starts from the same random state and validation on, as a user's script would."""
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    return load_dataset("digits")


def shared_data(name: str) -> Path:
    """A folder of ``../shared/data``; the test is skipped where that folder is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not available on this machine")
    return path
