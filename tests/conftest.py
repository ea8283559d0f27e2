"""Shared fixtures: the bundled digits, the shared real data folder, a clean Pyro state."""

from __future__ import annotations

from pathlib import Path

import pyro
import pytest

from pyro_vae.data import DataSplits, load_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
