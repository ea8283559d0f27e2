"""One-file checkpoints: model and guide parameters, the configuration and the preprocessing.

A model or guide is stored as the ``state_dict`` of its ``nn.Module`` (the module itself, or the
module a bound method such as ``vae.model`` belongs to). Parameters that live only in Pyro's
parameter store (``pyro.param`` statements, ``pyro.module`` of networks held elsewhere) are stored
too when an ``example`` batch is given: the pair is traced on it to find the parameters it owns,
and :func:`load_checkpoint` traces it again (given the same kind of ``example``) so that the
program registers them, with their constraints, before their values are copied in.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from torch import nn
from torch.distributions import transform_to

from pyro_vae.program import inspect_pair

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
    pyro_params: dict[str, torch.Tensor] | None = None  # constrained values of store-only parameters

    def load_into(self, model: Callable | None = None, guide: Callable | None = None, example: Example = None) -> None:
        """Copy the stored parameters into ``model`` and ``guide`` (those given), and the
        store-only parameters into Pyro's parameter store (the pair is traced on ``example`` first)."""
        for part, state, what in ((model, self.model_state, "model"), (guide, self.guide_state, "guide")):
            module = _module(part)
            if module is not None:
                _load_state(module, state, what, self.path)
            elif part is not None and state:
                raise ValueError(
                    f"{self.path} holds the {what}'s nn.Module weights, but this {what} is a "
                    f"{type(part).__name__} with no module to load them into; pass the nn.Module (or its bound method)"
                )
        if self.pyro_params:
            _load_pyro_params(self.pyro_params, model, guide, example, self.path)


Example = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None


def _module(part: Callable | None) -> nn.Module | None:
    """The ``nn.Module`` holding a model's or guide's parameters: itself, or a bound method's owner."""
    owner = getattr(part, "__self__", part)
    return owner if isinstance(owner, nn.Module) else None


def _state(part: Callable | None, example: Example) -> dict:
    if part is None:
        return {}
    if not isinstance(part, nn.Module) and example is None:
        raise TypeError(
            f"a model or guide given as a {type(part).__name__} may keep parameters in Pyro's parameter store "
            "(pyro.param, pyro.module): pass example= (a batch of data, or (x, y)) so that save_checkpoint "
            "traces it to find them, or pass the nn.Module itself"
        )
    module = _module(part)
    return {} if module is None else module.state_dict()


def _inspected(model: Callable, guide: Callable, example: Example):
    x, y = example if isinstance(example, tuple) else (example, None)
    return inspect_pair(model, guide, x, y)


def _store_only_parameters(model: Callable | None, guide: Callable | None, example: Example) -> dict:
    """Constrained values of the pair's parameters that no given module holds, by store name."""
    if example is None or model is None or guide is None:
        return {}
    held = {id(p) for part in (model, guide) if _module(part) is not None for p in _module(part).parameters()}
    store = pyro.get_param_store()
    owned = _inspected(model, guide, example).parameters()
    return {name: store[name].detach().clone() for name, tensor in owned.items() if id(tensor) not in held}


def _load_pyro_params(values: dict, model: Callable, guide: Callable, example: Example, path: Path) -> None:
    if model is None or guide is None:
        return
    if example is None:
        raise ValueError(
            f"{path} holds parameters of Pyro's parameter store ({sorted(values)[:3]}...); pass example= (a batch "
            "of data) so the program registers them before they are loaded"
        )
    store = pyro.get_param_store()
    owned = _inspected(model, guide, example).parameters()
    missing = sorted(set(values) - set(owned))
    if missing:
        raise ValueError(f"{path} holds parameters {missing[:5]} that this model and guide do not have")
    mismatched = [name for name, value in values.items() if store[name].shape != value.shape]
    if mismatched:
        shapes = {name: (tuple(values[name].shape), tuple(store[name].shape)) for name in mismatched[:3]}
        raise ValueError(f"{path} holds parameters of another shape (saved, here): {shapes}")
    with torch.no_grad():
        for name, value in values.items():
            unconstrained = owned[name]
            unconstrained.copy_(transform_to(store._constraints[name]).inv(value.to(unconstrained)))


def save_checkpoint(
    path: str | Path,
    model: Callable | None,
    guide: Callable | None,
    config: dict | None = None,
    preprocessing: dict | None = None,
    arrays: dict[str, torch.Tensor] | None = None,
    training: dict | None = None,
    *,
    example: Example = None,
) -> Path:
    """Write ``model`` and ``guide`` parameters with ``config`` (JSON-serializable), the
    ``preprocessing`` state (:meth:`pyro_vae.preprocessing.Preprocessor.state_dict`) and any
    further named tensors ``arrays`` (e.g. a detector's training scores) and the ``training``
    state to resume from (:meth:`pyro_vae.resume.TrainingState.to_dict`) to ``path``,
    atomically; with ``example`` (a batch of data, or ``(x, y)``), also the pair's parameters that
    live only in Pyro's parameter store. Returns the path."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": json.dumps(config or {}),
        "model_state": _state(model, example),
        "guide_state": _state(guide, example),
        "pyro_params": _store_only_parameters(model, guide, example),
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
    model: Callable | None = None,
    guide: Callable | None = None,
    map_location: str | torch.device = "cpu",
    *,
    example: Example = None,
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
        payload.get("pyro_params") or {},
    )
    checkpoint.load_into(model, guide, example)
    return checkpoint
