"""fit's optimizers."""

from __future__ import annotations

import pytest
import torch

from pyro_vae.optim import FusedAdam, make_optimizer


def test_fused_adam_equals_adam_also_for_non_contiguous_gradients():
    """Transposed gradients, as some backward passes leave them: PyTorch 2.14's fused CPU kernel
    alone steps them wrongly (by 1e-2 after five steps here); FusedAdam matches the plain Adam."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(256, 64, generator=generator)
    ours, reference = start.clone().requires_grad_(), start.clone().requires_grad_()
    optimizers = FusedAdam([ours], lr=1e-3), torch.optim.Adam([reference], lr=1e-3)
    for _ in range(5):
        gradient = torch.randn(64, 256, generator=generator).t()
        assert not gradient.is_contiguous()
        ours.grad, reference.grad = gradient, gradient.clone()
        for optimizer in optimizers:
            optimizer.step()
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert (ours - start).abs().max() > 1e-3  # it did step


def test_make_optimizer_names():
    assert make_optimizer("adam", 1e-3, None).pt_optim_constructor is FusedAdam
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer("sgd", 1e-3, None)
