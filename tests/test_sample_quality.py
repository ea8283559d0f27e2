"""Sample-quality metrics: zero for a set against itself, growing with known corruptions."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae.sample_quality import (
    class_coverage,
    frechet_distance,
    precision_recall,
    train_feature_classifier,
)


def gaussian(n: int, dims: int, seed: int, mean: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return mean + scale * torch.randn(n, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_frechet_distance_of_a_set_to_itself_is_zero_and_grows_with_noise():
    real = gaussian(2000, 8, seed=0)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)
    noise = gaussian(2000, 8, seed=1)
    distances = [frechet_distance(real, real + level * noise) for level in (0.1, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[0] > 0


def test_the_frechet_distance_of_two_gaussians_is_the_closed_form():
    """Diagonal covariances: |μ_1 - μ_2|² + Σ (σ_1 - σ_2)²; here 4 · 0.5² + 4 · (2 - 1)² = 5."""
    real, generated = gaussian(200_000, 4, seed=2), gaussian(200_000, 4, seed=3, mean=0.5, scale=2.0)
    assert frechet_distance(real, generated) == pytest.approx(5.0, rel=0.02)
    assert frechet_distance(generated, real) == pytest.approx(frechet_distance(real, generated), rel=1e-6)


def modes(n: int, centres: list[int], seed: int) -> torch.Tensor:
    """Points around the corners ``centres`` of a 2-d grid of eight clusters, spread 0.05."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.tensor([[math.cos(angle), math.sin(angle)] for angle in torch.arange(8) * math.pi / 4]) * 3
    which = torch.tensor(centres)[torch.randint(len(centres), (n,), generator=generator)]
    return grid[which] + 0.05 * torch.randn(n, 2, generator=generator)


def test_precision_and_recall_tell_blur_from_mode_collapse():
    real = modes(1600, list(range(8)), seed=0)
    same = precision_recall(real, modes(1600, list(range(8)), seed=1))
    assert same.precision > 0.95 and same.recall > 0.95
    collapsed = precision_recall(real, modes(1600, [0, 1, 2, 3], seed=2))  # half the modes: recall falls
    assert collapsed.precision > 0.95 and 0.4 < collapsed.recall < 0.6
    blurred = precision_recall(real, modes(1600, list(range(8)), seed=3) * 1.3)  # off the data: precision falls
    assert blurred.precision < 0.1


def test_class_coverage_counts_classes_and_measures_collapse():
    uniform = class_coverage(torch.arange(1000) % 10, 10)
    assert uniform.classes_present == 10 and uniform.total_variation == pytest.approx(0.0)
    collapsed = class_coverage(torch.full((1000,), 3), 10)
    assert collapsed.classes_present == 1 and collapsed.total_variation == pytest.approx(0.9)
    assert torch.equal(collapsed.shares, torch.eye(10, dtype=torch.float64)[3])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        class_coverage(torch.tensor([0, 10]), 10)


@pytest.mark.parametrize(
    "real,generated,message",
    [
        (torch.zeros(5), torch.zeros(5, 2), "must be feature vectors"),
        (torch.zeros(5, 2), torch.zeros(5, 3), "differ in size"),
        (torch.full((5, 2), math.nan), torch.zeros(5, 2), "NaN or infinite"),
    ],
)
def test_bad_features_are_named(real, generated, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(real, generated)


def test_the_feature_classifier_learns_the_digits_and_leaves_the_random_state_alone(digits):
    before = torch.get_rng_state()
    classifier = train_feature_classifier(digits.train_x, digits.train_y, epochs=15, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    accuracy = (classifier.predict(digits.test_x) == digits.test_y).double().mean()
    assert accuracy > 0.9
    features = classifier.features(digits.test_x)
    assert features.shape == (len(digits.test_x), 128)
    # the digits' own test set is close to their training set, and far from shuffled pixels
    real = classifier.features(digits.train_x)
    shuffled = digits.test_x.flatten(1)[:, torch.randperm(64)].reshape(digits.test_x.shape)
    assert frechet_distance(real, features) < 0.2 * frechet_distance(real, classifier.features(shuffled))
