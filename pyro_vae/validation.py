"""Checks of the data handed to the toolkit, run before any training or writing starts.

Each failure raises with a message that names the problem, where it is (rows and columns for
tables, data indices for images) and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SHOWN = 5  # at most this many row/column indices in a message


def _indices(mask: torch.Tensor) -> list[int]:
    return mask.nonzero().squeeze(1)[:SHOWN].tolist()


def check_data(x: torch.Tensor, name: str = "x", row_numbers: Sequence[int] | None = None) -> None:
    """``x`` is a non-empty floating-point tensor of finite values, one datum per row.
    ``row_numbers`` are the numbers by which the caller knows the rows (e.g. their rows in a file,
    counted from 0), used in the message; by default, their positions in ``x``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"{name} holds no data (shape {tuple(x.shape)})")
    if x.is_complex():
        raise TypeError(
            f"{name} holds complex values ({x.dtype}), whose imaginary parts would be lost; pass the real and "
            f"imaginary parts as separate features (torch.view_as_real({name}))"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} must hold floating-point values, got {x.dtype}; convert it with {name}.float()")
    finite = torch.isfinite(x)
    if finite.all():
        return
    bad = ~finite.reshape(x.shape[0], -1)
    positions = bad.any(1).nonzero().squeeze(1).tolist()
    rows = sorted(positions if row_numbers is None else (int(row_numbers[row]) for row in positions))[:SHOWN]
    where = f"rows {rows}" + (f" and columns {_indices(bad.any(0))}" if x.dim() == 2 else "") + " (counting from 0)"
    raise ValueError(
        f"{name} holds {int(bad.sum())} NaN or infinite values, e.g. at {where}; impute or drop them first"
    )


def check_labels(y: torch.Tensor, rows: int, num_classes: int | None = None, missing: int | None = -1) -> None:
    """Integer class labels, one per datum, in ``0 .. num_classes - 1`` (or ``missing``)."""
    if y.shape != (rows,):
        raise ValueError(f"expected one label per datum, shape ({rows},); got {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"labels must be integers, got {y.dtype}; convert them with y.long()")
    if num_classes is None:
        return
    known = (y >= 0) & (y < num_classes)
    if missing is not None:
        known |= y == missing
    if not known.all():
        raise ValueError(
            f"labels {sorted(set(y[~known].tolist()))[:SHOWN]} (e.g. at rows {_indices(~known)} of {rows}) "
            f"are outside the known classes 0..{num_classes - 1}"
            + (f" (and {missing} for a missing label)" if missing is not None else "")
        )
