"""Encoders and decoders keep any leading batch dimensions and produce the promised shapes."""

from __future__ import annotations

import pytest
import torch

from pyro_vae.nets import build_decoder, build_encoder


@pytest.mark.parametrize("x_shape", [(1, 8, 8), (1, 28, 28), (1, 28, 20), (3, 7, 9)])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_encoder_decoder_shapes_with_particle_dimension(arch, x_shape):
    encoder = build_encoder(arch, x_shape, (8, 16), out_features=6)
    decoder = build_decoder(arch, 3, (8, 16), x_shape, params_per_value=2)
    x = torch.rand(4, 5, *x_shape)  # [particles, batch, ...]
    assert encoder(x).shape == (4, 5, 6)
    assert decoder(torch.randn(4, 5, 3)).shape == (4, 5, 2, *x_shape)


def test_leading_dimensions_do_not_mix_data():
    """Datum i's output depends on datum i only (no batch statistics)."""
    decoder = build_decoder("conv", 3, (8, 4), (1, 8, 8))
    z = torch.randn(6, 3)
    together = decoder(z)
    alone = torch.cat([decoder(z[i : i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_bad_architectures_are_named():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_encoder("resnet", (4,), (8,), 2)
    with pytest.raises(ValueError, match="needs image data"):
        build_decoder("conv", 2, (8,), (10,))
