"""The optimizers :func:`pyro_vae.fit` steps with, as :class:`pyro.optim.PyroOptim` wrappers."""

from __future__ import annotations

import pyro.optim
import torch

OPTIMIZERS = ("adam", "clipped-adam")


class FusedAdam(torch.optim.Adam):
    """:class:`torch.optim.Adam` with its fused kernel: the same update in one pass over each
    tensor instead of about ten (for the 784-400-50 VAE, 1.8 → 1.0 ms of a training step on this
    machine's CPU).

    Gradients are made contiguous before the step: PyTorch 2.14's fused CPU kernel reads a
    non-contiguous gradient (a transposed view, as some backward passes leave them) in the wrong
    order and takes wrong steps (``tests/test_optim.py``).
    """

    def __init__(self, params, lr: float = 1e-3, **options) -> None:
        super().__init__(params, lr=lr, fused=True, **options)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None and not parameter.grad.is_contiguous():
                    parameter.grad = parameter.grad.contiguous()
        return super().step(closure)


def make_optimizer(name: str, lr: float, clip_norm: float | None) -> pyro.optim.PyroOptim:
    """``"adam"`` (:class:`FusedAdam`, optionally clipping each gradient to ``clip_norm``) or
    ``"clipped-adam"`` (Pyro's :class:`~pyro.optim.ClippedAdam`)."""
    if name == "adam":
        clip_args = {"clip_norm": clip_norm} if clip_norm else None
        return pyro.optim.PyroOptim(FusedAdam, {"lr": lr}, clip_args=clip_args)
    if name == "clipped-adam":
        return pyro.optim.ClippedAdam({"lr": lr, "clip_norm": clip_norm or 10.0})
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
