"""Numeric command-line options checked before any work: each option's type is a :class:`Bounded`
range, which refuses a value outside it with the option, the value and the range named (argparse
turns that into a usage error, exit status 2) and which the help text states."""

from __future__ import annotations

import argparse
import math

SEED_LIMIT = 2**32  # numpy's generators, which pyro.set_rng_seed also seeds, take seeds below this


class Bounded:
    """An argparse ``type``: an integer (``integer=True``) or a finite number in a range.

    :param low: the smallest value allowed (``None``: no lower bound).
    :param high: the largest value allowed (``None``: no upper bound).
    :param bool open_low: exclude ``low`` itself (a number > 0 rather than ≥ 0).
    :param bool open_high: exclude ``high`` itself.
    """

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        *,
        integer: bool = False,
        open_low: bool = False,
        open_high: bool = False,
    ) -> None:
        self.low, self.high, self.integer = low, high, integer
        self.open_low, self.open_high = open_low, open_high
        self.__name__ = "integer" if integer else "number"  # argparse names a type by it

    @property
    def text(self) -> str:
        """The range in words, e.g. "an integer ≥ 1" or "a number in (0, 0.5]"."""
        kind = "an integer" if self.integer else "a number"
        bound = "{:d}".format if self.integer else "{:g}".format
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{kind} in {left}{bound(self.low)}, {bound(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.open_low else '≥'} {bound(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.open_high else '≤'} {bound(self.high)}"
        return f"a finite {'integer' if self.integer else 'number'}"

    def __call__(self, text: str) -> int | float:
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {self.text}") from None
        if not math.isfinite(value) or not self.admits(value):
            raise argparse.ArgumentTypeError(f"{text} is not {self.text}")
        return value

    def admits(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.open_high and value == self.high))


POSITIVE_INTEGER = Bounded(1, integer=True)
NONNEGATIVE_INTEGER = Bounded(0, integer=True)
POSITIVE = Bounded(0, open_low=True)
NONNEGATIVE = Bounded(0)
SEED = Bounded(0, SEED_LIMIT - 1, integer=True)
FRACTION = Bounded(0, 1, open_high=True)  # a share that may be zero, never all
CONTAMINATION = Bounded(0, 0.5, open_low=True)  # an outlier share: some, at most half
