"""A GAN run of ``pyro-vae train-gan``: its configuration, its networks rebuilt from it, and the
run loaded back for ``pyro-vae sample``.

The checkpoint is the project's one-file format (:mod:`pyro_vae.checkpoint`, weights only): the
generator is stored as its model, the discriminator in the guide's place, the configuration's
``"model"`` is ``"gan"`` and the training state a :class:`~pyro_vae.adversarial.GANState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.checkpoint import Checkpoint
from pyro_vae.cli.stock import GAN_MODEL
from pyro_vae.gan import DISCRIMINATOR_ARCHS, Discriminator, Generator

_EDITED = "it was not written by this version of 'pyro-vae train-gan', or was edited; train it again"


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _sizes(value: object) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(map(_positive_int, value))


# config key: (check, what it must be)
_KEYS = {
    "x_shape": (lambda value: _sizes(value) and len(value) == 3, "a list of 3 positive integers (C, H, W)"),
    "latent_dim": (_positive_int, "a positive integer"),
    "hidden": (_sizes, "a non-empty list of positive integers"),
    "discriminator": (lambda value: value in DISCRIMINATOR_ARCHS[:2], f"one of {list(DISCRIMINATOR_ARCHS[:2])}"),
    "discriminator_hidden": (_sizes, "a non-empty list of positive integers"),
    "num_classes": (lambda value: value is None or _positive_int(value), "a positive integer or null"),
}


def check_gan_config(config: dict, path: Path) -> None:
    """Refuse anything but a GAN run's configuration, naming the key that is wrong."""
    if config.get("model") != GAN_MODEL:
        raise ValueError(
            f"{path} is not a GAN run (it was written by 'pyro-vae train'); resume it with 'pyro-vae train --resume'"
        )
    missing = sorted(set(_KEYS) - set(config))
    if missing:
        raise ValueError(f"{path}: its config lacks {missing}; {_EDITED}")
    for key, (check, expected) in _KEYS.items():
        if not check(config[key]):
            raise ValueError(f"{path}: config key {key!r} is {config[key]!r:.60}, expected {expected}; {_EDITED}")


def build_gan(config: dict) -> tuple[Generator, Discriminator]:
    """The DCGAN generator and the discriminator the configuration names, freshly initialized."""
    shape, classes = config["x_shape"], config["num_classes"]
    generator = Generator(shape, config["latent_dim"], config["hidden"], "conv", num_classes=classes)
    discriminator = Discriminator(shape, config["discriminator_hidden"], config["discriminator"], num_classes=classes)
    return generator, discriminator


@dataclass
class GANRun:
    """A trained GAN loaded from its run directory or checkpoint file."""

    generator: Generator
    discriminator: Discriminator
    checkpoint: Checkpoint
    directory: Path

    @property
    def config(self) -> dict:
        return self.checkpoint.config


def load_gan_run(checkpoint: Checkpoint, device: torch.device) -> GANRun:
    """Rebuild a GAN run's networks on ``device`` and load the checkpoint's weights into them."""
    check_gan_config(checkpoint.config, checkpoint.path)
    try:
        generator, discriminator = build_gan(checkpoint.config)
    except ValueError as error:  # a combination the key checks let through (an image too small, say)
        raise ValueError(f"{checkpoint.path}: its config builds no GAN ({error}); {_EDITED}") from None
    try:
        checkpoint.load_into(generator, discriminator)  # its messages call them the model and the guide
    except ValueError as error:
        fault = "its config does not fit its generator's and discriminator's weights"
        raise ValueError(f"{error}\n{fault}; {_EDITED}") from None
    return GANRun(generator.to(device).eval(), discriminator.to(device).eval(), checkpoint, checkpoint.path.parent)
