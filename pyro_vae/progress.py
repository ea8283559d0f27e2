"""Progress bars for long work (training epochs, scoring), shown on a terminal by default."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, *, show: bool | None, **options) -> tqdm:
    """A tqdm bar; ``show=None`` shows it only when the output is a terminal, ``False`` never."""
    return tqdm(iterable, disable=None if show is None else not show, **options)
