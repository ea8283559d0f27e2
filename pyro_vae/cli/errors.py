"""How a ``pyro-vae`` command ends: the one place that turns exceptions, signals and warnings into
the messages and exit statuses the README's failure table promises.

- a user error (bad data, file, option or checkpoint: :class:`ValueError`, :class:`TypeError`,
  :class:`OSError` and its subclasses such as :class:`FileNotFoundError`) prints
  ``pyro-vae COMMAND: error: ...`` and exits with status 2;
- a numerical fault (:class:`FloatingPointError`) prints ``numerical fault: ...``, status 3;
- Ctrl-C exits with status 130 and SIGTERM with 143 (the commands that can be resumed say how);
- anything else is a fault of pyro-vae itself: one line naming the exception, status 1, and the
  traceback only when ``PYRO_VAE_TRACEBACK=1`` asks for it.

Warnings are printed as ``pyro-vae COMMAND: warning: ...``, without the source line.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

USER_ERROR = 2
NUMERICAL_FAULT = 3
INTERNAL_ERROR = 1
TRACEBACK_VARIABLE = "PYRO_VAE_TRACEBACK"
USER_ERRORS = (ValueError, TypeError, OSError)
FIXES = {  # what to do about an operating-system error, by errno
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "free some space or write elsewhere",
    errno.EACCES: "check the permissions, or write elsewhere",
    errno.EPERM: "check the permissions, or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOENT: "check the path",
    errno.EMFILE: "raise the limit of open files (ulimit -n)",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises :class:`KeyboardInterrupt`, so that the
    same clean-up runs; its exit status is 143 (128 + SIGTERM)."""

    status = 128 + signal.SIGTERM


def interrupted_status(interruption: KeyboardInterrupt) -> int:
    """130 after Ctrl-C, 143 after SIGTERM."""
    return getattr(interruption, "status", 128 + signal.SIGINT)


def interruption_name(interruption: KeyboardInterrupt) -> str:
    return "terminated" if isinstance(interruption, Terminated) else "interrupted"


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the command runs, SIGTERM raises :class:`Terminated` (main thread only; the previous
    handler is restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe(error: BaseException) -> str:
    """An exception's message in at most two lines (a library's longer message, such as one
    ending in a tensor, is cut to its first line), without the ``[Errno N]`` of :class:`OSError`."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        fix = FIXES.get(error.errno)
        return f"{error.filename}: {error.strerror}" + (f"; {fix}" if fix else "")
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return "\n".join(lines) if len(lines) <= 2 else lines[0]


@contextmanager
def _warnings_as_lines(prefix: str) -> Iterator[None]:
    """Warnings in one line each, ``PREFIX: warning: message``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prefix}: warning: {message}", file=sys.stderr if file is None else file)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def run_command(prefix: str, command: Callable[[], int]) -> int:
    """Run ``command`` and return its exit status, turning what it raises into a message on
    standard error (see the module docstring)."""
    with _warnings_as_lines(prefix), _sigterm_as_interrupt():
        try:
            return command()
        except KeyboardInterrupt as interruption:
            print(f"\n{prefix}: {interruption_name(interruption)}", file=sys.stderr)
            return interrupted_status(interruption)
        except FloatingPointError as error:
            print(f"{prefix}: numerical fault: {error}", file=sys.stderr)
            return NUMERICAL_FAULT
        except USER_ERRORS as error:
            print(f"{prefix}: error: {describe(error)}", file=sys.stderr)
            return USER_ERROR
        except Exception as error:  # a fault of pyro-vae: say so in one line, not a traceback
            if os.environ.get(TRACEBACK_VARIABLE) == "1":
                traceback.print_exc()
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            print(
                f"{prefix}: internal error: {type(error).__name__}: {first_line}\n"
                f"(a fault of pyro-vae, or an input it does not check yet; {TRACEBACK_VARIABLE}=1 shows the traceback)",
                file=sys.stderr,
            )
            return INTERNAL_ERROR
