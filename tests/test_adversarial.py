"""The GAN half: networks, the non-saturating game, and the toy checks of the lecture."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pyro_vae.adversarial import GANState, discriminator_loss, fit_gan, generator_loss
from pyro_vae.gan import Discriminator, Generator

CENTRES = 2.0 * torch.tensor([[math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)] for k in range(8)])


def ring(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-d mixture of eight Gaussians on a circle (spread 0.05), and each point's mode."""
    generator = torch.Generator().manual_seed(seed)
    modes = torch.randint(8, (n,), generator=generator)
    return CENTRES[modes] + 0.05 * torch.randn(n, 2, generator=generator), modes


def nearest_mode(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    distances = torch.cdist(points, CENTRES)
    return distances.min(dim=1).indices, distances.min(dim=1).values


def toy_pair(num_classes: int | None = None) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    generator = Generator((2,), 4, [128, 128], "mlp", num_classes=num_classes, squash=False)
    return generator, Discriminator((2,), [128, 128], "mlp", num_classes=num_classes)


def test_the_gan_covers_at_least_seven_of_the_eight_modes():
    generator, discriminator = toy_pair()
    x, _ = ring(4096, seed=1)
    fit_gan(generator, discriminator, x, epochs=40, batch_size=128, lr=1e-3, seed=0, progress=False)
    modes, distances = nearest_mode(generator.sample(2000, generator=torch.Generator().manual_seed(2)))
    near = distances < 0.25
    counts = torch.bincount(modes[near], minlength=8)
    assert (counts >= 20).sum() >= 7, counts  # a mode is covered by at least 1 % of the samples
    assert near.double().mean() > 0.7  # and most samples lie on a mode


def test_class_conditional_samples_are_of_their_class():
    generator, discriminator = toy_pair(num_classes=8)
    x, modes = ring(4096, seed=3)
    fit_gan(generator, discriminator, (x, modes), epochs=40, batch_size=128, lr=1e-3, seed=0, progress=False)
    asked = torch.arange(2000) % 8
    found, _ = nearest_mode(generator.sample(2000, asked, generator=torch.Generator().manual_seed(4)))
    assert (found == asked).double().mean() >= 0.95


def test_the_losses_are_the_non_saturating_game():
    logits = torch.tensor([-3.0, 0.0, 2.0])
    assert torch.allclose(generator_loss(logits), torch.nn.functional.softplus(-logits).mean())
    even = discriminator_loss(torch.zeros(4), torch.zeros(4))
    assert even.item() == pytest.approx(2 * math.log(2))  # D cannot tell: log 2 on each side
    smoothed = discriminator_loss(torch.full((4,), 5.0), torch.full((4,), -5.0), label_smoothing=0.1)
    assert smoothed > discriminator_loss(torch.full((4,), 5.0), torch.full((4,), -5.0))  # confidence is penalized


def test_dcgan_and_patchgan_shapes_and_the_generators_range():
    generator = Generator((1, 28, 28), 16, [32, 64], "conv")
    images = generator.sample(6)
    assert images.shape == (6, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert Discriminator((1, 28, 28), [32, 64], "dcgan")(images).shape == (6,)
    assert Discriminator((1, 28, 28), [32, 64], "patch")(images).shape == (6, 1, 7, 7)  # one logit per patch
    colour = Discriminator((3, 16, 16), [16, 32], "patch", num_classes=10)
    assert colour(torch.rand(2, 3, 16, 16), torch.tensor([1, 7])).shape == (2, 1, 4, 4)
    for arch in ("dcgan", "patch"):  # four halvings leave nothing of an 8x8 image: named, not a conv error
        with pytest.raises(ValueError, match="too small"):
            Discriminator((1, 8, 8), [8, 16, 32, 64], arch)


def test_a_seeded_fit_is_reproducible_and_mismatched_inputs_are_named():
    x, modes = ring(256, seed=5)
    runs = []
    for _ in range(2):
        generator, discriminator = toy_pair()
        history = fit_gan(generator, discriminator, x, epochs=2, batch_size=64, seed=3, progress=False)
        runs.append((history.generator_loss, [p.detach().clone() for p in generator.parameters()]))
    assert runs[0][0] == runs[1][0] and all(map(torch.equal, runs[0][1], runs[1][1]))
    generator, discriminator = toy_pair()
    with pytest.raises(ValueError, match="not class-conditional"):
        fit_gan(generator, discriminator, (x, modes), epochs=1, progress=False)
    with pytest.raises(ValueError, match="both be class-conditional"):
        fit_gan(toy_pair(8)[0], discriminator, (x, modes), epochs=1, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        fit_gan(generator, discriminator, torch.full((8, 2), math.nan), epochs=1, progress=False)


def test_a_resumed_game_continues_bit_for_bit():
    """Two epochs, then two more from the state saved after the second, equal four in one go."""
    x, _ = ring(512, seed=5)
    generator, discriminator = toy_pair()
    fit_gan(generator, discriminator, x, epochs=4, batch_size=128, seed=0, progress=False)
    expected = [value.clone() for value in [*generator.parameters(), *discriminator.parameters()]]

    states = []
    generator, discriminator = toy_pair()
    fit_gan(generator, discriminator, x, epochs=2, batch_size=128, seed=0, progress=False, on_epoch_end=states.append)
    saved = {"g": copy.deepcopy(generator.state_dict()), "d": copy.deepcopy(discriminator.state_dict())}
    torch.manual_seed(123)  # whatever happened since: the state restores the draws
    generator, discriminator = toy_pair()
    generator.load_state_dict(saved["g"]), discriminator.load_state_dict(saved["d"])
    state = GANState.from_dict(states[-1].to_dict())
    history = fit_gan(generator, discriminator, x, epochs=4, batch_size=128, progress=False, resume=state)
    assert history.epoch == [1, 2, 3, 4] and [s.epoch for s in states] == [1, 2]
    resumed = [*generator.parameters(), *discriminator.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(expected, resumed, strict=True))
