"""Column-wise preprocessing of a table that keeps watching every column.

A table's columns are typed on the training data, in float64:

* **continuous** (three or more values): centred on the median and divided by a robust spread
  (the interquartile range / 1.349, or, where more than half the rows share one value, the median
  distance of the other rows from it), so that a few huge training values cannot stretch the
  scale. Standardized values beyond ``±tail`` are compressed logarithmically,
  :math:`t(z) = \\operatorname{sign}(z)\\,(c + \\log(1 + |z| - c))` for :math:`|z| > c`: every
  finite input lands in a range a float32 network handles (1e300 maps to about 700), and the
  map's log-Jacobian :math:`-\\log(1 + |z| - c)` is kept, so the model's density in the
  compressed space is a density of the original column;
* **binary** (two values): mapped to {0, 1}, for a Bernoulli likelihood;
* **constant**: left out of the model, which has nothing to learn from them.

A binary or constant column still watches its values: a value off its training levels is scored
with a small mixture weight ``log ε`` and a Cauchy-like decay in the distance to the nearest level
(:meth:`TablePreprocessor.off_level_log_density`), so a new value lowers the score, the more the
further it lies; the model sees the nearest level. Everything is plain tensors, so a fitted
preprocessor goes into a checkpoint and loads without running code.
"""

from __future__ import annotations

import math

import torch

TAIL = 5.0
OFF_LEVEL_WEIGHT = 1e-3  # ε: the mixture weight of values a binary or constant column never took
CONSTANT_SCALE = 1e-6  # the spread a constant column's new values are measured in, relative to it
LEVEL_TOLERANCE = 1e-7  # a value this close to a level, relative to max(1, |level|), is on it (float32 rounds at 6e-8)
LARGEST = torch.finfo(torch.float64).max


def _robust_scale(column: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """The interquartile range / 1.349 (σ for a Gaussian); where that is 0 (most rows share one
    value), the median distance from ``center`` of the rows that differ from it."""
    q1, q3 = torch.quantile(column, torch.tensor([0.25, 0.75], dtype=column.dtype))
    if q3 > q1:
        return (q3 - q1) / 1.349
    distance = (column - center).abs()
    return distance[distance > 0].median()


def _difference_log_abs(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """log |x - center|, finite for any finite x and center even where x - center overflows."""
    difference = x - center
    finite = torch.isfinite(difference)
    overflowed = torch.maximum(x.abs(), center.abs().expand_as(x)).log() + math.log(2.0)
    return torch.where(finite, torch.where(finite, difference, torch.ones_like(x)).abs().log(), overflowed)


def compress(z_log_abs: torch.Tensor, sign: torch.Tensor, tail: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``t(z)`` and ``log |t'(z)|`` from ``log |z|`` and the sign of z (see the module docstring)."""
    abs_z = z_log_abs.exp()
    # log(1 + |z| - c) = log|z| + log(1 + (1 - c) / |z|): no overflow for any finite log|z|.
    excess = z_log_abs + torch.log1p((1 - tail) * torch.exp(-z_log_abs))
    outside = abs_z > tail
    magnitude = torch.where(outside, tail + excess, abs_z)
    return sign * magnitude, torch.where(outside, -excess, torch.zeros_like(excess))


class TablePreprocessor:
    """Types a table's columns on training data and maps new rows for the model (module docstring).

    :param float tail: standardized values beyond ±``tail`` are compressed logarithmically.
    """

    def __init__(self, tail: float = TAIL) -> None:
        self.tail = tail
        self.keep: torch.Tensor | None = None  # columns the model sees (not constant)
        self.binary: torch.Tensor | None = None  # of the kept columns, the binary ones
        self.low: torch.Tensor | None = None  # per column: lowest training value (the level of a constant)
        self.high: torch.Tensor | None = None  # highest training value
        self.center: torch.Tensor | None = None  # of the kept columns
        self.scale: torch.Tensor | None = None

    def fit(self, x: torch.Tensor) -> TablePreprocessor:
        """Type the columns of ``x`` (rows, columns), finite values."""
        if x.dim() != 2:
            raise ValueError(f"a table must be 2-D (rows, columns), got shape {tuple(x.shape)}")
        x = x.double()
        self.low, self.high = x.amin(0), x.amax(0)
        self.keep = self.high > self.low
        if not self.keep.any():
            raise ValueError(
                f"no informative column: all {x.shape[1]} columns are constant in the {x.shape[0]} training rows; "
                "a detector needs training data that vary"
            )
        kept, low, high = x[:, self.keep], self.low[self.keep], self.high[self.keep]
        self.binary = ((kept == low) | (kept == high)).all(0)
        center = kept.median(0).values
        scale = torch.stack([_robust_scale(kept[:, j], center[j]) for j in range(kept.shape[1])])
        self.center = torch.where(self.binary, low, center)
        # Clamped: the spread of finite values near ±1.8e308 overflows to inf.
        self.scale = torch.where(self.binary, high - low, scale).clamp(max=LARGEST)
        return self

    def _check(self, x: torch.Tensor) -> None:
        if self.keep is None:
            raise RuntimeError("TablePreprocessor.transform called before fit")
        if x.dim() != 2 or x.shape[1] != len(self.keep):
            raise ValueError(f"the detector was fitted on {len(self.keep)} columns; got data of shape {tuple(x.shape)}")

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's view of ``x`` (float32, the kept columns) and, per row, the log-density
        that the map and the watched levels add to the model's: the compression's log-Jacobian,
        ``-log scale`` of every continuous column, and :meth:`off_level_log_density`."""
        self._check(x)
        x = x.double()
        kept = x[:, self.keep]
        continuous = ~self.binary
        sign = torch.sign(kept - self.center)
        z, log_jacobian = compress(_difference_log_abs(kept, self.center) - self.scale.log(), sign, self.tail)
        levels = ((kept - self.center) / self.scale).clamp(0, 1).round()
        view = torch.where(self.binary, levels, z)
        log_density = (log_jacobian - self.scale.log())[:, continuous].sum(1) + self.off_level_log_density(x)
        return view.float(), log_density

    def off_level_log_density(self, x: torch.Tensor) -> torch.Tensor:
        """Per row, Σ over binary and constant columns whose value is off their training levels of
        log ε - log(1 + d / s): d the distance to the nearest level, s the column's spread
        (the two levels' distance; ``CONSTANT_SCALE`` x max(1, |level|) for a constant). A value
        within ``LEVEL_TOLERANCE`` x max(1, |level|) of a level is on it, so float32 copies and
        rounding noise of the training values are not new values."""
        watched = torch.ones_like(self.keep)
        watched[self.keep] = self.binary
        x, low, high = x[:, watched], self.low[watched], self.high[watched]
        spread = torch.where(high > low, high - low, CONSTANT_SCALE * low.abs().clamp(min=1.0)).clamp(max=LARGEST)
        below, above = _difference_log_abs(x, low), _difference_log_abs(x, high)
        to_low, to_high = (x - low).abs(), (x - high).abs()
        log_distance = torch.where(to_low <= to_high, below, above)
        log_ratio = log_distance - spread.log()
        penalty = math.log(OFF_LEVEL_WEIGHT) - torch.nn.functional.softplus(log_ratio)  # log(1 + d/s)
        tolerance = LEVEL_TOLERANCE * torch.maximum(low.abs(), high.abs()).clamp(min=1.0)
        on_level = (to_low <= tolerance) | (to_high <= tolerance)
        return torch.where(on_level, torch.zeros_like(penalty), penalty).sum(1)

    def state_dict(self) -> dict:
        """Plain data: loadable with ``torch.load(weights_only=True)``."""
        names = ("keep", "binary", "low", "high", "center", "scale")
        return {"tail": self.tail} | {name: getattr(self, name) for name in names}

    @classmethod
    def from_state_dict(cls, state: dict) -> TablePreprocessor:
        """The preprocessor :meth:`state_dict` describes."""
        if "center" not in state:
            raise ValueError(
                "this detector file was written by an earlier pyro_vae, whose table preprocessing is gone; "
                "fit the detector again (pyro-vae fit-detector, or NoveltyDetector().fit)"
            )
        preprocessor = cls(state["tail"])
        for name in ("keep", "binary", "low", "high", "center", "scale"):
            setattr(preprocessor, name, state[name])
        return preprocessor
