"""The networks of a GAN (Goodfellow et al. 2014): a generator x = g(z) and a discriminator
D(x), plain or class-conditional.

- :class:`Generator`: z ~ N(0, I) mapped by the project's decoders; with ``arch="conv"`` it is
  DCGAN's generator (Radford et al. 2016), a linear layer to a coarse feature map and stride-2
  transposed ("fractionally-strided") convolutions up to the image, squashed into [0, 1];
- :class:`Discriminator` with ``arch="dcgan"``: stride-2 convolutions with leaky ReLUs and one
  logit per image; with ``arch="patch"``, PatchGAN's (Isola et al. 2017): fully convolutional,
  one logit per overlapping patch, which judges local texture and "can help encourage the
  generator to avoid creating blurry images"; ``arch="mlp"`` for vectors (toy data);
- class-conditional versions (Mirza & Osindero 2014) with ``num_classes``: the generator takes a
  label embedding appended to z, the discriminator one-hot label maps appended to the image's
  channels (or to the vector).

Batch-norm free, like the project's encoders and decoders. The adversarial game that trains them
is :mod:`pyro_vae.adversarial`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from pyro_vae.nets import MLP, ConvEncoder, LabelEncoding, _activation, _halved, build_decoder

GENERATOR_ARCHS = ("conv", "mlp")
DISCRIMINATOR_ARCHS = ("dcgan", "patch", "mlp")


class Generator(nn.Module):
    """x = g(z, y): ``[..., latent_dim]`` (and labels ``[...]``) to ``[..., *x_shape]``.

    :param x_shape: the shape of one sample (``(channels, height, width)`` for ``"conv"``).
    :param int latent_dim: the size of z.
    :param hidden: the decoder's layer widths or channels, from the output inwards (as
        :func:`~pyro_vae.nets.build_decoder` takes them).
    :param str arch: ``"conv"`` (DCGAN) or ``"mlp"``.
    :param num_classes: for a class-conditional generator.
    :param bool squash: a sigmoid on the output, for images in [0, 1].
    """

    def __init__(
        self,
        x_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int],
        arch: str = "conv",
        num_classes: int | None = None,
        squash: bool = True,
    ) -> None:
        super().__init__()
        if arch not in GENERATOR_ARCHS:
            raise ValueError(f"unknown generator arch {arch!r}; choose one of {GENERATOR_ARCHS}")
        self.x_shape, self.latent_dim, self.squash = tuple(x_shape), latent_dim, squash
        self.labels = None if num_classes is None else LabelEncoding(num_classes)
        extra = 0 if self.labels is None else self.labels.dim
        self.decoder = build_decoder(arch, latent_dim + extra, hidden, x_shape)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is None) != (self.labels is None):
            raise ValueError("a class-conditional generator needs labels y, an unconditional one takes none")
        if self.labels is not None:
            z = torch.cat([z, self.labels(y)], dim=-1)
        out = self.decoder(z).squeeze(-len(self.x_shape) - 1)  # the decoder's parameter dimension
        return torch.sigmoid(out) if self.squash else out

    def sample(self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples (of the classes ``y``, if conditional), without gradients."""
        parameter = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, device=parameter.device, dtype=parameter.dtype)
        with torch.no_grad():
            return self(z, y)


class PatchLogits(nn.Module):
    """PatchGAN's body: stride-2 convolutions with leaky ReLUs, then a 3x3 convolution to one
    logit per patch (no pooling, no linear layer); ``in_shape`` is ``(channels, height, width)``."""

    def __init__(self, in_shape: Sequence[int], hidden: Sequence[int]) -> None:
        super().__init__()
        for size in in_shape[1:]:
            _halved(size, len(hidden), round_up=False)  # a clear error for images too small
        channels = [in_shape[0], *hidden]
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise(channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), _activation("leaky_relu")]
        layers.append(nn.Conv2d(channels[-1], 1, kernel_size=3, padding=1))
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class Discriminator(nn.Module):
    """D(x, y): the logit that x (of class y) is real; ``[N, *x_shape]`` to ``[N]`` (``"dcgan"``,
    ``"mlp"``) or to ``[N, 1, h, w]``, one logit per patch (``"patch"``).

    :param x_shape: the shape of one sample.
    :param hidden: channels (conv) or widths (mlp) from the input inwards.
    :param str arch: ``"dcgan"``, ``"patch"`` or ``"mlp"``.
    :param num_classes: for a class-conditional discriminator.
    """

    def __init__(
        self, x_shape: Sequence[int], hidden: Sequence[int], arch: str = "dcgan", num_classes: int | None = None
    ) -> None:
        super().__init__()
        if arch not in DISCRIMINATOR_ARCHS:
            raise ValueError(f"unknown discriminator arch {arch!r}; choose one of {DISCRIMINATOR_ARCHS}")
        if arch != "mlp" and len(x_shape) != 3:
            raise ValueError(f"a {arch} discriminator takes images (channels, height, width), got {tuple(x_shape)}")
        self.x_shape, self.arch = tuple(x_shape), arch
        self.labels = None if num_classes is None else LabelEncoding(num_classes)
        extra = 0 if self.labels is None else self.labels.dim
        if arch == "mlp":
            self.body = MLP(math.prod(x_shape) + extra, hidden, 1, "leaky_relu")
        elif arch == "dcgan":
            self.body = ConvEncoder((x_shape[0] + extra, *x_shape[1:]), hidden, 1, "leaky_relu")
        else:
            self.body = PatchLogits((x_shape[0] + extra, *x_shape[1:]), hidden)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is None) != (self.labels is None):
            raise ValueError("a class-conditional discriminator needs labels y, an unconditional one takes none")
        if self.arch == "mlp":
            features = x.flatten(1)
            if self.labels is not None:
                features = torch.cat([features, self.labels(y)], dim=-1)
            return self.body(features).squeeze(-1)
        if self.labels is not None:
            maps = self.labels(y)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
            x = torch.cat([x, maps], dim=1)
        logits = self.body(x)
        return logits.squeeze(-1) if self.arch == "dcgan" else logits
