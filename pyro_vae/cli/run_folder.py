"""A run directory that cannot lose anything: what ``pyro-vae train`` may write there, checked
before any work starts.

- :func:`check_output`: any command's output path can be written, before the command works;
- :func:`check_new_run`: ``--out`` must be (or become) a folder, and none of the files a run
  writes (:data:`RUN_FILES`) may exist there unless ``--overwrite`` is given; other files in the
  folder are never touched;
- :class:`RunLock`: one process at a time writes a run folder (an advisory ``fcntl`` lock on
  the hidden file ``.pyro-vae.lock`` while the run writes, released by the kernel when the
  process ends, however it ends);
- :func:`check_writable`: the folder accepts a file and has room for the checkpoints;
- :func:`data_fingerprint`: a digest of the data and preprocessing, stored in the checkpoint, so
  that ``--resume`` notices changed data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TextIO

import torch

RUN_FILES = (
    "checkpoint.pt",
    "config.json",
    "history.csv",
    "metrics.json",
    "elbo.png",
    "losses.png",
    "samples.png",
    "reconstructions.png",
    "style_transfer.png",
    "novelty.csv",
    "novelty_histogram.png",
    "novelty_top10.png",
)
LOCK_NAME = ".pyro-vae.lock"
SPACE_MARGIN_BYTES = 32 * 2**20  # figures, CSVs and the temporary copy of a checkpoint being written


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_folder(out: Path, option: str = "--out") -> None:
    """``out`` is a folder, or can be created as one (no file in the way)."""
    existing = _first_existing(out.absolute())
    if not existing.is_dir():
        where = "is a file" if existing == out.absolute() else f"lies below {existing}, which is a file"
        raise NotADirectoryError(f"{option} {out} {where}, not a folder; choose another {option}")


def check_output(path: Path, option: str, folder: bool) -> None:
    """Before any work: the output ``path`` (a folder, or a file) can be written."""
    check_folder(path if folder else path.parent, option)
    if not folder and path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder; give a file name, e.g. {path / 'figure.png'}")
    existing = _first_existing((path if folder else path.parent).absolute())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{option} {path}: {existing} is not writable; choose another {option}")


def check_new_run(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` holding any file a run writes, unless ``overwrite``."""
    check_folder(out)
    present = [name for name in RUN_FILES if (out / name).exists()]
    if present and not overwrite:
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise FileExistsError(
            f"{out} already holds {shown}, which this run would replace; pass --overwrite to replace them (other "
            "files stay), or choose another --out"
        )


class RunLock:
    """Holds ``out/.pyro-vae.lock`` exclusively while a run writes ``out``; a second process is
    refused at once, naming the holder's process id."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_NAME
        self.handle = None

    def __enter__(self) -> RunLock:
        while True:  # until the file locked is the one under the lock's name
            handle = self._locked()
            try:
                if os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()  # its holder removed it between our open and our lock: lock the new one
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def _locked(self) -> TextIO:
        """The lock file, opened and locked, or :class:`FileExistsError` naming its holder."""
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")
        except OSError as error:
            raise PermissionError(
                f"cannot write to --out {self.path.parent} ({error.strerror}); choose a writable folder"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FileExistsError(
                f"{self.path.parent} is being written by another pyro-vae process ({holder}); wait for it to "
                "finish, or choose another --out"
            ) from None
        return handle

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.path.unlink(missing_ok=True)  # still locked: a process that opened it meanwhile retries
        self.handle.close()  # closing releases the lock
        self.handle = None


def check_writable(out: Path, modules: list[torch.nn.Module]) -> None:
    """``out`` accepts a new file and has room for a checkpoint of ``modules`` (parameters and
    buffers, with Adam's two moment estimates, written beside the previous checkpoint)."""
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".pyro-vae-probe."):
            pass
    except OSError as error:
        raise PermissionError(f"cannot write to --out {out} ({error.strerror}); choose a writable folder") from None
    tensors = [tensor for module in modules for tensor in (*module.parameters(), *module.buffers())]
    needed = 2 * 3 * sum(tensor.numel() * tensor.element_size() for tensor in tensors) + SPACE_MARGIN_BYTES
    free = shutil.disk_usage(out).free
    if free < needed:
        raise OSError(
            f"only {free / 2**20:.0f} MiB free in {out}; a run of this model needs about {needed / 2**20:.0f} MiB: "
            "free some space or choose another --out"
        )


def data_fingerprint(*tensors: torch.Tensor | None) -> str:
    """A BLAKE2 digest of the tensors' shapes, dtypes and values (``None`` counts as absent)."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none;")
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the bytes, not a copy
    return digest.hexdigest()
