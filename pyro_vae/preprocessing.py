"""Preprocessing stored with a model: a per-feature affine map, then optional binarization.

``transform(x) = (x - offset) / scale``, then ``x > threshold`` when ``binarize`` is set. It is
fitted on the training split only and saved in the checkpoint as plain tensors and numbers, so the
same map is applied to every later datum that is scored.
"""

from __future__ import annotations

import torch

METHODS = ("none", "minmax", "standardize")


class Preprocessor:
    """
    :param str method: ``"none"``, ``"minmax"`` (each feature to [0, 1] on the training data) or
        ``"standardize"`` (zero mean, unit variance). Constant features get scale 1.
    :param binarize: if set, values above this threshold become 1 and the rest 0 (after scaling).
    """

    def __init__(self, method: str = "none", binarize: float | None = None) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown preprocessing {method!r}; choose one of {METHODS}")
        self.method = method
        self.binarize = binarize
        self.offset: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None

    def fit(self, x: torch.Tensor) -> Preprocessor:
        if self.method == "minmax":
            low, high = x.amin(0), x.amax(0)
            self.offset, self.scale = low, high - low
        elif self.method == "standardize":
            self.offset, self.scale = x.mean(0), x.std(0)
        else:
            self.offset, self.scale = torch.zeros(x.shape[1:]), torch.ones(x.shape[1:])
        self.scale = torch.where(self.scale > 0, self.scale, torch.ones_like(self.scale))
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.offset is None or self.scale is None:
            raise RuntimeError("Preprocessor.transform called before fit")
        if x.shape[1:] != self.offset.shape:
            raise ValueError(
                f"data of shape {tuple(x.shape[1:])} per datum, but the model was fitted on {tuple(self.offset.shape)}"
            )
        x = (x - self.offset.to(x.device)) / self.scale.to(x.device)
        if self.binarize is not None:
            x = (x > self.binarize).to(x.dtype)
        return x

    def state_dict(self) -> dict:
        """Plain data: loadable with ``torch.load(weights_only=True)``."""
        return {"method": self.method, "binarize": self.binarize, "offset": self.offset, "scale": self.scale}

    @classmethod
    def from_state_dict(cls, state: dict) -> Preprocessor:
        """The preprocessor :meth:`state_dict` describes; :class:`ValueError` names what a
        malformed state lacks or holds wrongly."""
        _check_state(state)
        preprocessor = cls(state["method"], state["binarize"])
        preprocessor.offset, preprocessor.scale = state["offset"], state["scale"]
        return preprocessor


def _check_state(state: object) -> None:
    """Refuse a preprocessing state that :meth:`Preprocessor.state_dict` did not write."""
    if not isinstance(state, dict):
        raise ValueError(f"the stored preprocessing is a {type(state).__name__}, not a dict")
    missing = sorted({"method", "binarize", "offset", "scale"} - set(state))
    if missing:
        raise ValueError(f"the stored preprocessing lacks {missing}")
    binarize = state["binarize"]
    if binarize is not None and (not isinstance(binarize, int | float) or isinstance(binarize, bool)):
        raise ValueError(f"the stored preprocessing's binarize is {binarize!r}, not a number or None")
    offset, scale = state["offset"], state["scale"]
    if not (isinstance(offset, torch.Tensor) and isinstance(scale, torch.Tensor) and offset.shape == scale.shape):
        raise ValueError("the stored preprocessing's offset and scale are not tensors of one shape")
    if not (offset.isfinite().all() and scale.isfinite().all() and (scale > 0).all()):
        raise ValueError("the stored preprocessing's offset or scale holds NaN, infinity or a non-positive scale")
