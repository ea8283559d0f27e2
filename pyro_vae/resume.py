"""What an interrupted :func:`pyro_vae.fit` needs, besides the parameters, to continue exactly.

After every epoch ``fit`` can hand a :class:`TrainingState` to a callback: the epoch, the history
so far, the optimizer's moments, the state of the minibatch-order generator and of every random
number generator (torch's CPU and, once CUDA is in use, CUDA generators, Python, NumPy), and the
early-stopping record. Saved with the model and guide parameters and passed back as
``fit(..., resume=state)``, it makes an interrupted-then-resumed run take the same steps, on the
same minibatches, with the same random draws, as an uninterrupted one on the same device.
:meth:`TrainingState.to_dict` holds only tensors and plain Python values, so a checkpoint carrying
it still loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np
import torch


def rng_state() -> dict:
    """The states of torch's (CPU, and CUDA's where it is in use), Python's and NumPy's global
    random number generators."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "python": random.getstate(),
        "numpy": [name, torch.as_tensor(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict) -> None:
    """Restore the states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())  # a checkpoint loaded onto a GPU carries them there
    if state.get("cuda") is not None and torch.cuda.is_available():  # absent from older checkpoints
        torch.cuda.set_rng_state_all([device.cpu() for device in state["cuda"][: torch.cuda.device_count()]])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), position, has_gauss, cached))


@dataclass
class TrainingState:
    """The state of :func:`pyro_vae.fit` at the end of ``epoch``."""

    epoch: int
    history: dict
    optimizer: dict
    batch_order: torch.Tensor
    rng: dict
    best_val_elbo: float
    best_parameters: dict[str, torch.Tensor] | None

    def to_dict(self) -> dict:
        """Tensors and plain values only (safe for ``weights_only`` loading)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> TrainingState:
        return cls(**state)
