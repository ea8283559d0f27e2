"""One-file checkpoints: model and guide parameters, the configuration and the preprocessing.

Everything is stored as tensors and plain data (the configuration as a JSON string), so a
checkpoint is read with ``torch.load(..., weights_only=True)``, which cannot run code. Files are
written to a temporary name, flushed to disk and renamed, so an interrupted save never leaves a
half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

FORMAT = "pyro-vae-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """The contents of a checkpoint file."""

    path: Path
    config: dict
    model_state: dict
    guide_state: dict
    preprocessing: dict | None
    arrays: dict[str, torch.Tensor]
    training: dict | None = None  # a pyro_vae.resume.TrainingState.to_dict(), to resume training

    def load_into(self, model: nn.Module | None = None, guide: nn.Module | None = None) -> None:
        """Copy the stored parameters into ``model`` and ``guide`` (those given)."""
        if model is not None:
            _load_state(model, self.model_state, "model", self.path)
        if guide is not None:
            _load_state(guide, self.guide_state, "guide", self.path)


def _state(part: nn.Module | None) -> dict:
    if part is None:
        return {}
    if not isinstance(part, nn.Module):
        raise TypeError(
            f"save_checkpoint stores nn.Module parameters, not a {type(part).__name__}; for a model or guide "
            "written as a function, pass the nn.Module that holds its networks (e.g. an nn.ModuleDict)"
        )
    return part.state_dict()


def save_checkpoint(
    path: str | Path,
    model: nn.Module | None,
    guide: nn.Module | None,
    config: dict | None = None,
    preprocessing: dict | None = None,
    arrays: dict[str, torch.Tensor] | None = None,
    training: dict | None = None,
) -> Path:
    """Write ``model`` and ``guide`` parameters with ``config`` (JSON-serializable), the
    ``preprocessing`` state (:meth:`pyro_vae.preprocessing.Preprocessor.state_dict`) and any
    further named tensors ``arrays`` (e.g. a detector's training scores) and the ``training``
    state to resume from (:meth:`pyro_vae.resume.TrainingState.to_dict`) to ``path``,
    atomically. Returns the path."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(config or {}),
        "model_state": _state(model),
        "guide_state": _state(guide),
        "preprocessing": preprocessing,
        "arrays": arrays or {},
        "training": training,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:  # a failed or interrupted save leaves the previous checkpoint alone
        temporary.unlink(missing_ok=True)
        raise
    return path


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}


def _is_pickle_calling_code(path: Path) -> bool:
    """Whether a raw pickle file imports or calls anything; read with pickletools, never run."""
    try:
        return any(opcode.name in _CODE_OPCODES for opcode, _, _ in pickletools.genops(path.read_bytes()))
    except Exception:  # not a pickle at all: corrupted rather than crafted
        return False


def _read(path: Path, map_location: str | torch.device) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error) or _is_pickle_calling_code(path):
            raise ValueError(
                f"{path} was refused: it names Python objects other than tensors and plain data, and loading "
                "those could run code; only load such a file with plain torch.load if you trust its source"
            ) from None
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupted?)") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupted?): {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pyro_vae checkpoint")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path} has checkpoint version {payload.get('version')}; this pyro_vae reads version {VERSION}"
        )
    return payload


def _load_state(part: nn.Module, state: dict, what: str, path: Path) -> None:
    missing, unexpected = part.state_dict().keys() - state.keys(), state.keys() - part.state_dict().keys()
    if missing or unexpected:
        raise ValueError(
            f"{path} holds a {what} of another architecture: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    try:
        part.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path} holds a {what} of another shape: {error}") from None


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    guide: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read a checkpoint and, if given, load its parameters into ``model`` and ``guide``.

    Raises :class:`FileNotFoundError` for a missing file and :class:`ValueError` with the reason
    for a corrupted file, a file that is not a checkpoint, a file holding code, or parameters
    that do not fit the given model or guide.
    """
    path = Path(path)
    payload = _read(path, map_location)
    checkpoint = Checkpoint(
        path,
        json.loads(payload["config"]),
        payload["model_state"],
        payload["guide_state"],
        payload["preprocessing"],
        payload.get("arrays", {}),
        payload.get("training"),
    )
    checkpoint.load_into(model, guide)
    return checkpoint
