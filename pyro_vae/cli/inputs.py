"""The data a command reads: a data set or file by its spec, one split of it, checked before any
work, with the rows of NaN or infinite values named as the user numbers them (their rows in the
file, for files)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pyro_vae.data import DataSplits, load_dataset
from pyro_vae.validation import check_data


def check_splits(data: DataSplits, spec: str) -> None:
    """Both splits of ``data``, checked as one (rows numbered as in the file, for files)."""
    check_data(data.select("all")[0], spec, data.rows("all"))


def chosen_split(split: str | None, spec: str, given: bool) -> str:
    """``--split``, by default all of a file given with ``--data`` and the test split otherwise."""
    return split or ("all" if given and ":" in spec else "test")


def check_shape(x: torch.Tensor, x_shape: Sequence[int], spec: str) -> None:
    """The data have the shape per datum the run was trained on."""
    if tuple(x.shape[1:]) != tuple(x_shape):
        raise ValueError(
            f"{spec} holds data of shape {tuple(x.shape[1:])} per datum, but the run was trained on "
            f"{tuple(x_shape)}; give data of that shape"
        )


def read_data(
    spec: str, data_dir: str | None, split: str, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``split`` of the data set ``spec`` (``"all"`` of a file: its rows in file order), and
    its labels, checked."""
    data = load_dataset(spec, data_dir, download)
    x, labels = data.select(split)
    check_data(x, f"{spec} ({split})", data.rows(split))
    return x, labels
