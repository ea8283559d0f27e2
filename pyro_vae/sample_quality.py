"""Sample quality measured in the features of a classifier of the same data: Fréchet distance,
precision and recall, and class coverage; nothing downloaded.

A likelihood says how well a model explains data, not how good its samples look: a VAE's samples
are blurry at a good log p(x), and a GAN has no log p(x) at all. The usual yardstick, the Fréchet
Inception Distance (Heusel et al. 2017), compares the Gaussian fitted to features of real images
with the one fitted to features of generated images, in an ImageNet classifier's feature space.
Here the features come from a small classifier trained on the data set itself
(:func:`train_feature_classifier`), as is usual for MNIST-like data, so that nothing is
downloaded and the features know the data's classes:

- :func:`frechet_distance`: ``|μ_r - μ_g|² + tr(Σ_r + Σ_g - 2 (Σ_r Σ_g)^{1/2})`` between the two
  fitted Gaussians; 0 for a set against itself, growing as the samples drift from the data;
- :func:`precision_recall` (Kynkäänniemi et al. 2019, "Improved precision and recall metric for
  assessing generative models"): the share of generated samples that fall inside the real data's
  manifold (each real point's ball reaching its k-th nearest real neighbour), and the share of
  real points inside the generated samples' manifold. Blurry or broken samples lower precision;
  mode collapse lowers recall;
- :func:`class_coverage`: the classes the classifier assigns to the samples against the uniform
  distribution of a class-balanced data set (Srivastava et al. 2017, "VEEGAN", count modes this
  way): how many classes appear at all, and the total-variation distance to uniform.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from pyro_vae.progress import progress_bar


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


class Coverage(NamedTuple):
    classes_present: int  # classes assigned to at least one sample
    total_variation: float  # 0.5 Σ_c |share_c - 1 / classes|: 0 uniform, 1 - 1/classes one class
    shares: torch.Tensor  # the share of the samples assigned to each class


def _as_features(features: torch.Tensor, name: str) -> torch.Tensor:
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"{name} must be feature vectors shaped [N >= 2, dims], got {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name} holds NaN or infinite features")
    return features.detach().to(torch.float64)


def frechet_distance(real: torch.Tensor, generated: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to ``real`` and ``generated`` features
    (``[N, dims]`` each), computed in float64; the matrix square root through the symmetric
    ``Σ_r^{1/2} Σ_g Σ_r^{1/2}``, whose eigenvalues are those of ``Σ_r Σ_g``."""
    real, generated = _as_features(real, "real"), _as_features(generated, "generated")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"real and generated features differ in size: {real.shape[1]} and {generated.shape[1]}")
    mean_r, mean_g = real.mean(0), generated.mean(0)
    cov_r, cov_g = torch.cov(real.T).reshape(real.shape[1], -1), torch.cov(generated.T).reshape(real.shape[1], -1)
    values, vectors = torch.linalg.eigh(cov_r)
    root_r = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(root_r @ cov_g @ root_r).clamp(min=0).sqrt().sum()
    distance = (mean_r - mean_g).square().sum() + cov_r.trace() + cov_g.trace() - 2 * cross
    return max(distance.item(), 0.0)


def _kth_neighbour_radii(points: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Each point's distance to its k-th nearest other point of the same set."""
    radii = []
    for block in points.split(chunk):
        distances = torch.cdist(block, points)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # the point itself is at distance 0
    return torch.cat(radii)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """Whether each point lies in at least one ball (centre, radius)."""
    return torch.cat([(torch.cdist(block, centres) <= radii).any(dim=1) for block in points.split(chunk)])


def precision_recall(real: torch.Tensor, generated: torch.Tensor, k: int = 3, chunk: int = 1024) -> PrecisionRecall:
    """Kynkäänniemi et al.'s precision and recall of ``generated`` against ``real`` features, with
    each set's manifold the union of balls reaching every point's ``k``-th nearest neighbour."""
    real, generated = _as_features(real, "real"), _as_features(generated, "generated")
    if min(len(real), len(generated)) <= k:
        raise ValueError(f"precision and recall with k = {k} need more than {k} points in each set")
    real_radii = _kth_neighbour_radii(real, k, chunk)
    generated_radii = _kth_neighbour_radii(generated, k, chunk)
    precision = _inside(generated, real, real_radii, chunk).double().mean().item()
    recall = _inside(real, generated, generated_radii, chunk).double().mean().item()
    return PrecisionRecall(precision, recall)


def class_coverage(labels: torch.Tensor, num_classes: int) -> Coverage:
    """How the classes assigned to samples (``labels``, integers in ``[0, num_classes)``) cover
    the classes of a class-balanced data set."""
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-d tensor of class indices, got shape {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min().item()}..{labels.max().item()}")
    shares = torch.bincount(labels.long(), minlength=num_classes).double() / labels.numel()
    total_variation = 0.5 * (shares - 1 / num_classes).abs().sum().item()
    return Coverage(int((shares > 0).sum()), total_variation, shares)


class FeatureClassifier(nn.Module):
    """A small convolutional classifier of images; its penultimate layer gives the features.

    :param image_shape: ``(channels, height, width)``.
    :param int num_classes: the data set's classes.
    :param int feature_dim: the width of the feature layer.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, feature_dim: int = 128) -> None:
        super().__init__()
        channels, height, width = image_shape
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Penultimate-layer features of images ``x`` (``[N, channels, height, width]``)."""
        with torch.no_grad():
            return torch.cat([self.body(block) for block in x.split(chunk)])

    def predict(self, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """The most probable class of each image."""
        with torch.no_grad():
            return torch.cat([self.head(self.body(block)).argmax(-1) for block in x.split(chunk)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_feature_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> FeatureClassifier:
    """A :class:`FeatureClassifier` trained by Adam on images ``x`` with class labels ``y``. Its
    initial weights and minibatch order come from ``seed``; the caller's random state is left as
    it was."""
    if x.dim() != 4 or y.shape != (x.shape[0],):
        raise ValueError(f"need images [N, C, H, W] and labels [N], got {tuple(x.shape)} and {tuple(y.shape)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = FeatureClassifier(x.shape[1:], int(y.max()) + 1).to(x.device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
        bar = progress_bar(total=epochs, desc="feature classifier", unit="epoch", show=progress)
        with bar:
            for _ in range(epochs):
                for batch in torch.randperm(len(x)).split(batch_size):
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(classifier(x[batch]), y[batch].long()).backward()
                    optimizer.step()
                bar.update(1)
    return classifier.eval()
