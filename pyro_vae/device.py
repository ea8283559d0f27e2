"""Choosing the torch device from a user's ``--device`` string."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when it is available, else the CPU; ``"cpu"``, ``"cuda"`` and
    ``"cuda:N"`` are taken as given, with a clear error when CUDA is asked for but absent."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return device
