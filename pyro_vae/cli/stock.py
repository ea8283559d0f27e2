"""The stock models and guides by name: the one place the command line reaches into
``pyro_vae.models`` and ``pyro_vae.guides``.

A run's configuration (``config.json``, also stored inside the checkpoint) names the pieces, so a
checkpoint can be turned back into a model and guide without any Python code of the user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.checkpoint import Checkpoint, load_checkpoint
from pyro_vae.device import resolve_device
from pyro_vae.guides import AmortizedDelta, AmortizedNormal, ConditionalNormal
from pyro_vae.models import VAE, ConditionalVAE
from pyro_vae.preprocessing import Preprocessor

GUIDES = {"normal": AmortizedNormal, "delta": AmortizedDelta}
CHECKPOINT_NAME = "checkpoint.pt"


Model = VAE | ConditionalVAE
Guide = AmortizedNormal | AmortizedDelta | ConditionalNormal


def _build_conditional(config: dict) -> tuple[ConditionalVAE, ConditionalNormal]:
    x_shape, latent_dim, hidden, arch = config["x_shape"], config["latent_dim"], config["hidden"], config["arch"]
    classes, embedding = config["num_classes"], config.get("embedding_dim")
    options = config.get("likelihood_options", {})
    model = ConditionalVAE.build(x_shape, classes, latent_dim, hidden, arch, config["likelihood"], embedding, **options)
    guide = ConditionalNormal.build(
        x_shape,
        classes,
        latent_dim,
        hidden,
        arch,
        embedding,
        config.get("classifier_arch"),
        config.get("classifier_hidden"),
    )
    if config.get("alpha", 0) > 0:
        model.classifier, model.alpha = guide.classifier, config["alpha"]
    return model, guide


def build_pair(config: dict) -> tuple[Model, Guide]:
    """The stock model and guide that ``config`` describes (untrained)."""
    if config.get("conditional"):
        return _build_conditional(config)
    if config.get("guide") not in GUIDES:
        raise ValueError(f"unknown guide {config.get('guide')!r}; choose one of {sorted(GUIDES)}")
    x_shape, latent_dim, hidden, arch = config["x_shape"], config["latent_dim"], config["hidden"], config["arch"]
    model = VAE.build(x_shape, latent_dim, hidden, arch, config["likelihood"], **config.get("likelihood_options", {}))
    guide = GUIDES[config["guide"]].build(x_shape, latent_dim, hidden, arch)
    return model, guide


@dataclass
class Run:
    """A trained stock model loaded from a run directory or checkpoint file."""

    model: Model
    guide: Guide
    checkpoint: Checkpoint
    preprocessor: Preprocessor
    device: torch.device
    directory: Path

    @property
    def config(self) -> dict:
        return self.checkpoint.config

    @property
    def conditional(self) -> bool:
        return bool(self.config.get("conditional"))


def checkpoint_path(location: str | Path) -> Path:
    """``location`` is a run directory (holding ``checkpoint.pt``) or a checkpoint file."""
    location = Path(location)
    return location / CHECKPOINT_NAME if location.is_dir() else location


def load_run(location: str | Path, device: str = "cpu") -> Run:
    """Rebuild the stock model and guide of a run and load their trained parameters."""
    path = checkpoint_path(location)
    torch_device = resolve_device(device)
    checkpoint = load_checkpoint(path, map_location=torch_device)
    try:
        model, guide = build_pair(checkpoint.config)
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path} does not describe a stock pyro_vae model (config lacks {error})") from None
    checkpoint.load_into(model, guide)
    model.to(torch_device).eval()
    guide.to(torch_device).eval()
    if checkpoint.preprocessing is None:
        raise ValueError(f"{path} stores no preprocessing; it was not written by 'pyro-vae train'")
    preprocessor = Preprocessor.from_state_dict(checkpoint.preprocessing)
    return Run(model, guide, checkpoint, preprocessor, torch_device, path.parent)
