"""One-file checkpoints: model and guide parameters, the configuration and the preprocessing.

A model or guide is stored as the ``state_dict`` of its ``nn.Module`` (the module itself, or the
module a bound method such as ``vae.model`` belongs to). Parameters that live only in Pyro's
parameter store (``pyro.param`` statements, ``pyro.module`` of networks held elsewhere) are stored
too when an ``example`` batch is given: the pair is traced on it to find the parameters it owns,
and :func:`load_checkpoint` traces it again (given the same kind of ``example``) so that the
program registers them, with their constraints, before their values are copied in.

Everything is stored as tensors and plain data (the configuration as a JSON string), so a
checkpoint is read with ``torch.load(..., weights_only=True)``, which cannot run code; every other
fault of a file read (not a checkpoint, damaged, edited, non-finite weights) is a
:class:`ValueError` that names the file, the problem and the fix. Files are written to a unique
temporary name, flushed to disk and renamed, so an interrupted save never leaves a half-written
checkpoint in place of a good one, and two processes saving into one folder do not collide.
"""

from __future__ import annotations

import json
import os
import pickletools
import secrets
import warnings
import zipfile
from collections.abc import Callable, Iterator
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
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")  # unique: concurrent saves do not race
    stream = open(temporary, "xb")  # outside the try: a name this call did not create is never removed
    try:
        with stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:  # a failed or interrupted save leaves the previous checkpoint alone
        temporary.unlink(missing_ok=True)
        raise
    return path


NOT_A_CHECKPOINT = "expected a run directory holding checkpoint.pt or a checkpoint file written by pyro-vae"
DAMAGED = "the file is damaged, or was not written by pyro-vae (or edited since); retrain, or restore an earlier copy"
# torch.save writes a zip archive; pickle.dump and torch's legacy format, a pickle
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"
_TORCH_PICKLE = "/data.pkl"  # the pickle inside torch.save's archive, beside the tensors' storages
_REQUIRED = {"config": str, "model_state": dict, "guide_state": dict, "preprocessing": (dict, type(None))}
_OPTIONAL = {"arrays": dict, "training": (dict, type(None)), "pyro_params": (dict, type(None))}
_TENSOR_ENTRIES = ("model_state", "guide_state", "pyro_params", "arrays")
_WEIGHTS = ("model_state", "guide_state", "pyro_params")


def _globals(data: bytes) -> Iterator[str]:
    """The ``module.name`` of each global a pickle imports, read with pickletools, never run. The
    operands of ``STACK_GLOBAL`` are the two values pushed just before it (possibly from the memo)."""
    memo: dict[int, object] = {}
    pushed: list[object] = [None, None]
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("GLOBAL", "INST"):
            yield arg.replace(" ", ".")
        elif opcode.name == "STACK_GLOBAL":
            yield f"{pushed[-2]}.{pushed[-1]}"
        elif opcode.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1]
        elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1]
        elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        else:
            pushed.append(arg if isinstance(arg, str) else None)


def _pickles(path: Path) -> Iterator[bytes]:
    """The pickles of a file: itself, or the ``<name>/data.pkl`` inside the zip archive torch.save writes."""
    if not zipfile.is_zipfile(path):
        yield path.read_bytes()
        return
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if member.endswith(_TORCH_PICKLE):
                yield archive.read(member)


def _is_tensor_global(name: str) -> bool:
    """Whether a global is one of those torch rebuilds tensors and state dicts with (a file naming
    another torch global is refused by torch's loader with "Unsupported global", named above)."""
    return name.startswith("torch.") or name == "collections.OrderedDict"


def _is_pickle_calling_code(path: Path) -> bool:
    """Whether a file's pickle imports anything but torch's tensor-rebuilding functions (which is
    how a pickle runs code); read with zipfile and pickletools, never unpickled."""
    try:
        return any(not _is_tensor_global(name) for data in _pickles(path) for name in _globals(data))
    except Exception:  # the scan stops where the file is damaged: what it saw named no code
        return False


def _first_sentence(error: BaseException) -> str:
    """The start of a library's message, without the advice and dumps that follow it."""
    message = str(error).strip()
    if not message:
        return type(error).__name__
    return message.splitlines()[0].split(". ")[0][:200]


def _zip_members(path: Path) -> list[str] | None:
    """The names in a zip archive; None where its directory cannot be read (a truncated file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def _check_kind(path: Path) -> None:
    """Refuse, before torch reads it, a file that torch.save did not write (a CSV, text or image
    file, an empty file, a zip archive of other files) or that cannot be read at all."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
    except OSError as error:
        raise ValueError(f"{path} cannot be read ({error.strerror}); check its permissions") from None
    if not start:
        reason = "it is empty"
    elif start.startswith(_ZIP_MAGIC):
        members = _zip_members(path)
        if members is None or any(name.endswith(_TORCH_PICKLE) for name in members):
            return
        reason = "a zip archive, but not one torch.save writes"
    elif start.startswith(_PICKLE_MAGIC):
        return
    else:
        reason = "not a readable checkpoint: neither the zip archive nor the pickle torch.save writes"
    raise ValueError(f"{path} is not a pyro-vae checkpoint ({reason}); {NOT_A_CHECKPOINT}")


def _load_error(path: Path, error: Exception) -> ValueError:
    """What torch's refusal to read ``path`` means: code it will not run, or a damaged file."""
    if "Unsupported global" in str(error) or _is_pickle_calling_code(path):
        return ValueError(
            f"{path} was refused: it holds Python objects other than tensors and plain data, and loading "
            "those could run code; only load such a file with plain torch.load if you trust its source"
        )
    return ValueError(
        f"{path} is not a readable checkpoint (truncated or corrupted?): {_first_sentence(error)}; {DAMAGED}"
    )


def _check_entries(path: Path, payload: dict) -> None:
    """Every entry a checkpoint needs is there, of its type, the state dicts holding only tensors."""
    missing = sorted(set(_REQUIRED) - set(payload))
    if missing:
        raise ValueError(f"{path} lacks the checkpoint entries {missing}; {DAMAGED}")
    for key, kind in (_REQUIRED | _OPTIONAL).items():
        if key in payload and not isinstance(payload[key], kind):
            raise ValueError(f"{path} holds a {type(payload[key]).__name__} as its {key!r}; {DAMAGED}")
    for key in _TENSOR_ENTRIES:
        odd = [name for name, value in (payload.get(key) or {}).items() if not isinstance(value, torch.Tensor)]
        if odd:
            raise ValueError(f"{path} holds non-tensors in its {key!r}: {odd[:3]}; {DAMAGED}")


def _check_finite(path: Path, payload: dict) -> None:
    """Refuse weights holding NaN or infinity, naming them."""
    bad = {
        f"{key}[{name!r}]": int((~value.isfinite()).sum())
        for key in _WEIGHTS
        for name, value in (payload.get(key) or {}).items()
        if value.is_floating_point() and not value.isfinite().all()
    }
    if bad:
        shown = ", ".join(f"{name} ({count} values)" for name, count in list(bad.items())[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(
            f"{path} holds non-finite weights (NaN or infinity) in {shown}{more}: training diverged or the file "
            "was damaged; retrain, or resume from an earlier copy of the checkpoint"
        )


def _config(path: Path, text: str) -> dict:
    """The configuration stored as JSON text: a JSON object."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} holds a config that is not valid JSON ({error}); {DAMAGED}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a config that is a JSON {type(config).__name__}, not an object; {DAMAGED}")
    return config


def _device(path: Path, map_location: str | torch.device) -> torch.device:
    """``map_location`` as a device that exists here."""
    try:
        device = torch.device(map_location)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError):  # an unknown name, or a device this machine lacks
        raise ValueError(
            f"cannot load {path} onto device {str(map_location)!r}: there is no such device here; use --device cpu"
        ) from None
    return device


def _read(path: Path, map_location: str | torch.device) -> dict:
    """The checkpoint's entries, read without running code, each checked; the errors of
    :func:`load_checkpoint`."""
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a directory, not a checkpoint file; {NOT_A_CHECKPOINT}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; {NOT_A_CHECKPOINT}")
    device = _device(path, map_location)
    _check_kind(path)
    try:
        with warnings.catch_warnings():  # torch warns of the pickle protocol of files that are refused anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # whatever torch's reader raises, the file cannot be used
        raise _load_error(path, error) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pyro-vae checkpoint (a torch file of something else); {NOT_A_CHECKPOINT}")
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path} has checkpoint version {payload.get('version')}; this pyro_vae reads version {VERSION}"
        )
    _check_entries(path, payload)
    _check_finite(path, payload)
    return payload


def _load_state(part: nn.Module, state: dict, what: str, path: Path) -> None:
    own = part.state_dict()
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    if missing or unexpected:
        raise ValueError(
            f"{path} holds a {what} of another architecture: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    mismatched = {
        name: (tuple(state[name].shape), tuple(value.shape))
        for name, value in own.items()
        if state[name].shape != value.shape
    }
    if mismatched:
        shown = dict(list(mismatched.items())[:3])
        raise ValueError(f"{path} holds a {what} of another shape (saved, here): {shown}")
    part.load_state_dict(state)


def load_checkpoint(
    path: str | Path,
    model: Callable | None = None,
    guide: Callable | None = None,
    map_location: str | torch.device = "cpu",
    *,
    example: Example = None,
) -> Checkpoint:
    """Read a checkpoint and, if given, load its parameters into ``model`` and ``guide``.

    Raises :class:`FileNotFoundError` for a missing file or a directory, and :class:`ValueError`
    naming the file, the problem and the fix for a corrupted file, a file that is not a checkpoint
    (a CSV, text or image file, an empty file), a file holding code, one lacking entries or
    holding a malformed config, weights holding NaN or infinity, a ``map_location`` device this
    machine lacks, or parameters that do not fit the given model or guide.
    """
    path = Path(path)
    payload = _read(path, map_location)
    checkpoint = Checkpoint(
        path,
        _config(path, payload["config"]),
        payload["model_state"],
        payload["guide_state"],
        payload["preprocessing"],
        payload.get("arrays", {}),
        payload.get("training"),
        payload.get("pyro_params") or {},
    )
    checkpoint.load_into(model, guide, example)
    return checkpoint
