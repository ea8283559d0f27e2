"""Small neural networks for encoders and decoders.

Every network here accepts any number of leading batch dimensions, so the same module works on a
minibatch ``[B, ...]`` and on the vectorized particles ``[K, B, ...]`` that importance sampling uses.
They return raw parameters; :mod:`pyro_vae.likelihoods` turns those into distributions.

The convolutional pair follows the DCGAN recipe (Radford et al. 2016): stride-2 convolutions down,
stride-2 transposed convolutions up, batch-norm free so that per-datum scores do not depend on the
other members of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn


def _activation(name: str) -> nn.Module:
    activations = {
        "relu": nn.ReLU,
        "elu": nn.ELU,
        "softplus": nn.Softplus,
        "tanh": nn.Tanh,
        "leaky_relu": lambda: nn.LeakyReLU(0.2),  # a DCGAN discriminator's
    }
    if name not in activations:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(activations)}")
    return activations[name]()


class MLP(nn.Sequential):
    """Fully connected network ``in_features -> hidden... -> out_features``.

    :param int in_features: size of the (flattened) input.
    :param hidden: sizes of the hidden layers, possibly empty (a linear map).
    :param int out_features: size of the output.
    :param str activation: ``"relu"``, ``"elu"``, ``"softplus"``, ``"tanh"`` or ``"leaky_relu"``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, activation: str = "relu") -> None:
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for size_in, size_out in pairwise(sizes):
            layers += [nn.Linear(size_in, size_out), _activation(activation)]
        super().__init__(*layers[:-1])


class FlattenMLP(nn.Module):
    """An :class:`MLP` that flattens an input of shape ``[..., *in_shape]`` first.

    :param in_shape: the event shape of one input, e.g. ``(1, 28, 28)``.
    """

    def __init__(
        self, in_shape: Sequence[int], hidden: Sequence[int], out_features: int, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.mlp = MLP(math.prod(self.in_shape), hidden, out_features, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.flatten(x.dim() - len(self.in_shape)))


class UnflattenMLP(nn.Module):
    """An :class:`MLP` whose output is reshaped to ``[..., channels, *out_shape]``.

    ``channels`` is the number of distribution parameters per output value (one for a mean or a
    logit, two for a mean and a scale).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_shape: Sequence[int],
        channels: int = 1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.out_shape = (channels, *out_shape)
        self.mlp = MLP(in_features, hidden, math.prod(self.out_shape), activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(z).unflatten(-1, self.out_shape)


def _halved(size: int, times: int, round_up: bool) -> int:
    """The size after ``times`` stride-2 steps: a 4x4 kernel with padding 1 floors odd sizes;
    a decoder rounds up instead and crops its output."""
    for _ in range(times):
        size = (size + round_up) // 2
    if size < 1:
        raise ValueError(f"images are too small for {times} stride-2 layers; use fewer hidden layers")
    return size


class ConvEncoder(nn.Module):
    """DCGAN-style encoder: stride-2 convolutions, then a linear layer to ``out_features``.

    :param in_shape: ``(channels, height, width)`` of one image.
    :param hidden: channels of the convolutional layers, e.g. ``(32, 64)``; each halves the
        resolution.
    """

    def __init__(
        self, in_shape: Sequence[int], hidden: Sequence[int], out_features: int, activation: str = "relu"
    ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"ConvEncoder needs images shaped (channels, height, width), got {tuple(in_shape)}")
        self.in_shape = tuple(in_shape)
        channels = [in_shape[0], *hidden]
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise(channels):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), _activation(activation)]
        height, width = (_halved(s, len(hidden), round_up=False) for s in in_shape[1:])
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(channels[-1] * height * width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_shape = x.shape[:-3]
        h = self.convs(x.reshape(-1, *self.in_shape))
        return self.linear(h.flatten(1)).reshape(*batch_shape, -1)


class ConvDecoder(nn.Module):
    """DCGAN-style decoder: a linear layer to a coarse feature map, then stride-2 transposed
    convolutions, cropped to ``out_shape``.

    :param int in_features: latent dimension.
    :param hidden: channels of the feature maps from coarse to fine, e.g. ``(64, 32)``; each
        doubles the resolution.
    :param out_shape: ``(channels, height, width)`` of one image.
    :param int params_per_value: distribution parameters per pixel (output channels are
        ``params_per_value * channels``). The output has shape
        ``[..., params_per_value, channels, height, width]``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_shape: Sequence[int],
        params_per_value: int = 1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(out_shape) != 3:
            raise ValueError(f"ConvDecoder needs images shaped (channels, height, width), got {tuple(out_shape)}")
        if not hidden:
            raise ValueError("ConvDecoder needs at least one hidden channel size")
        self.out_shape = tuple(out_shape)
        self.params_per_value = params_per_value
        self.coarse_shape = (hidden[0], *(_halved(s, len(hidden), round_up=True) for s in out_shape[1:]))
        self.linear = nn.Sequential(nn.Linear(in_features, math.prod(self.coarse_shape)), _activation(activation))
        channels = [*hidden, params_per_value * out_shape[0]]
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise(channels):
            layers += [nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1), _activation(activation)]
        self.deconvs = nn.Sequential(*layers[:-1])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch_shape = z.shape[:-1]
        h = self.linear(z.reshape(-1, z.shape[-1])).unflatten(-1, self.coarse_shape)
        channels, height, width = self.out_shape
        out = self.deconvs(h)[..., :height, :width]
        return out.reshape(*batch_shape, self.params_per_value, channels, height, width)


ARCHITECTURES = ("mlp", "conv")


def _check_arch(arch: str, shape: Sequence[int]) -> None:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    if arch == "conv" and len(shape) != 3:
        raise ValueError(f"the conv architecture needs image data (channels, height, width), not shape {tuple(shape)}")


def build_encoder(arch: str, x_shape: Sequence[int], hidden: Sequence[int], out_features: int) -> nn.Module:
    """An encoder ``[..., *x_shape] -> [..., out_features]``; ``hidden`` lists layer widths
    (``mlp``) or channels (``conv``) from the input inwards."""
    _check_arch(arch, x_shape)
    if arch == "conv":
        return ConvEncoder(x_shape, hidden, out_features)
    return FlattenMLP(x_shape, hidden, out_features)


def build_decoder(
    arch: str, latent_dim: int, hidden: Sequence[int], x_shape: Sequence[int], params_per_value: int = 1
) -> nn.Module:
    """A decoder ``[..., latent_dim] -> [..., params_per_value, *x_shape]`` mirroring
    :func:`build_encoder` with the same ``hidden`` (used in reverse order)."""
    _check_arch(arch, x_shape)
    mirrored = list(reversed(hidden))
    if arch == "conv":
        return ConvDecoder(latent_dim, mirrored, x_shape, params_per_value)
    return UnflattenMLP(latent_dim, mirrored, x_shape, params_per_value)


class LabelEncoding(nn.Module):
    """Class labels as vectors: one-hot, or a learned embedding of ``embedding_dim`` dimensions.

    Works on any label shape, including the ``[classes, 1]`` tensors of enumerated labels.
    """

    def __init__(self, num_classes: int, embedding_dim: int | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a label needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.embedding = None if embedding_dim is None else nn.Embedding(num_classes, embedding_dim)
        self.dim = num_classes if embedding_dim is None else embedding_dim

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            return self.embedding(y.long())
        return nn.functional.one_hot(y.long(), self.num_classes).to(torch.get_default_dtype())


def concat_features(*parts: torch.Tensor) -> torch.Tensor:
    """Concatenate feature vectors along the last dimension, broadcasting their batch dimensions
    (a datum's features ``[B, F]`` with enumerated labels ``[C, 1, L]`` give ``[C, B, F + L]``)."""
    batch_shape = torch.broadcast_shapes(*(part.shape[:-1] for part in parts))
    return torch.cat([part.expand(*batch_shape, part.shape[-1]) for part in parts], dim=-1)
