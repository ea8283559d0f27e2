"""Figures a person would rather look at than read: training curves, image grids, novelty.

Every figure is a :class:`matplotlib.figure.Figure` of its own, outside pyplot's state, written
as PNG by :meth:`~matplotlib.figure.Figure.savefig` (which draws with the Agg canvas for PNG
whatever the backend): nothing here selects a backend or opens a window, so importing and
plotting work headless and leave the caller's matplotlib configuration as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_vae.adversarial import GANHistory
from pyro_vae.training import History


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_history(history: History, path: str | Path, title: str = "Training") -> Path:
    """The objective per datum against epoch, on the training minibatches and on the validation
    data, named as the history names them (the ELBO, the importance-weighted bound, the ELBO with
    free bits: :class:`~pyro_vae.training.History`)."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    same = history.objective == history.validation_objective
    training = "training (minibatch average)" if same else f"training: {history.objective} (minibatch average)"
    axes.plot(history.epoch, history.train_elbo, label=training, color="tab:blue")
    if not all(math.isnan(v) for v in history.val_elbo):
        validation = "validation" if same else f"validation: {history.validation_objective}"
        axes.plot(history.epoch, history.val_elbo, label=validation, color="tab:orange")
    if history.best_epoch is not None:
        axes.axvline(history.best_epoch, color="grey", linestyle=":", label=f"best epoch ({history.best_epoch})")
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"{history.objective if same else 'objective'} per datum (nats)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_gan_history(history: GANHistory, path: str | Path, title: str = "GAN training") -> Path:
    """Both players' mean losses against epoch, with the value of a discriminator that cannot
    tell data from samples (2 log 2 for its loss, log 2 for the generator's) for reference."""
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot(history.epoch, history.discriminator_loss, label="discriminator", color="tab:red")
    axes.plot(history.epoch, history.generator_loss, label="generator (non-saturating)", color="tab:green")
    axes.axhline(2 * math.log(2), color="tab:red", linestyle=":", label="chance: 2 log 2, log 2")
    axes.axhline(math.log(2), color="tab:green", linestyle=":")
    axes.set_xlabel("epoch")
    axes.set_ylabel("mean loss per minibatch (nats)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def _as_images(images: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in [0, 1] to ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` (colour) numpy."""
    array = images.detach().float().clamp(0, 1).cpu().numpy()
    return array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1)


def image_grid(
    images: torch.Tensor,
    path: str | Path,
    title: str,
    columns: int | None = None,
    captions: Sequence[str] | None = None,
) -> Path:
    """Tile ``images`` (``[N, C, H, W]`` in [0, 1]) into one figure, with optional captions."""
    pictures = _as_images(images)
    count = len(pictures)
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    height, width = pictures.shape[1:3]
    cell = 0.9 if captions is None else 1.4
    figure = Figure(figsize=(columns * cell * width / max(height, width), rows * cell + 0.4), layout="constrained")
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(axes_grid.flat):
        axes.axis("off")
        if index < count:
            axes.imshow(pictures[index], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if captions is not None:
                axes.set_title(captions[index], fontsize=7)
    figure.suptitle(title)
    return _save(figure, path)


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, path: str | Path, title: str) -> Path:
    """Originals in the top row of each pair, their reconstructions underneath."""
    count = len(originals)
    columns = min(count, 10)
    pairs = math.ceil(count / columns)
    figure = Figure(figsize=(columns * 1.0, 2.0 * pairs + 0.4), layout="constrained")
    axes_grid = figure.subplots(2 * pairs, columns, squeeze=False)
    for index, (original, reconstruction) in enumerate(
        zip(_as_images(originals), _as_images(reconstructions), strict=True)
    ):
        row, column = 2 * (index // columns), index % columns
        for offset, picture in ((0, original), (1, reconstruction)):
            axes_grid[row + offset, column].imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    for axes in axes_grid.flat:
        axes.set_xticks([])
        axes.set_yticks([])
    for row in range(0, axes_grid.shape[0], 2):
        axes_grid[row, 0].set_ylabel("data", fontsize=8)
        axes_grid[row + 1, 0].set_ylabel("recon.", fontsize=8)
    figure.suptitle(title)
    return _save(figure, path)


def score_histogram(
    scores: np.ndarray,
    path: str | Path,
    title: str,
    marked: np.ndarray | None = None,
    label: str = "log p(x)",
    groups: np.ndarray | None = None,
) -> Path:
    """Histogram of per-datum scores; ``marked`` scores (e.g. the most novel) as red ticks. With
    0/1 ``groups`` (1 = novel), the two groups are drawn apart on shared bins."""
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    bins = np.histogram_bin_edges(scores, bins=min(60, max(10, len(scores) // 10)))
    if groups is None:
        axes.hist(scores, bins=bins, color="tab:blue", alpha=0.8)
    else:
        for value, colour, name in ((0, "tab:blue", "normal (label 0)"), (1, "tab:orange", "novel (label 1)")):
            members = scores[groups == value]
            axes.hist(members, bins=bins, color=colour, alpha=0.6, label=f"{name}: {len(members)}")
        axes.legend()
    if marked is not None:
        for index, value in enumerate(marked):
            legend = f"the {len(marked)} most novel" if index == 0 else None
            axes.axvline(value, color="tab:red", alpha=0.6, linewidth=1, label=legend)
        axes.legend()
    axes.set_xlabel(f"{label} per datum (nats); lower = more novel")
    axes.set_ylabel("count")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def reference_histogram(
    reference: np.ndarray, scores: np.ndarray, threshold: float, path: str | Path, title: str, label: str = "log p(x)"
) -> Path:
    """Training (reference) scores against new scores, as densities on shared bins, with the
    novelty threshold."""
    figure = Figure(figsize=(6.5, 3.8))
    axes = figure.subplots()
    finite = np.concatenate([reference, scores])
    low, high = np.percentile(finite, [0.5, 100])
    bins = np.linspace(min(low, threshold), high, 60)
    clipped = [np.clip(values, bins[0], bins[-1]) for values in (reference, scores)]
    axes.hist(clipped[0], bins=bins, density=True, alpha=0.55, color="tab:blue", label=f"training ({len(reference)})")
    axes.hist(clipped[1], bins=bins, density=True, alpha=0.55, color="tab:orange", label=f"new ({len(scores)})")
    flagged = np.mean(scores < threshold)
    axes.axvline(
        threshold, color="tab:red", linewidth=1.5, label=f"threshold {threshold:.1f} ({flagged:.1%} of new flagged)"
    )
    axes.set_xlabel(f"{label} per datum (nats); lower = more novel; lowest 0.5 % drawn at the left edge")
    axes.set_ylabel("density")
    axes.set_title(title)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return _save(figure, path)


def roc_curve(novel: np.ndarray, novelty: np.ndarray, path: str | Path, title: str) -> tuple[Path, float]:
    """ROC of a novelty score (higher = more novel) against true labels (1 = novel); returns the
    PNG path and the AUROC."""
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as curve

    false_positive, true_positive, _ = curve(novel, novelty)
    auroc = float(roc_auc_score(novel, novelty))
    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.subplots()
    axes.plot(false_positive, true_positive, color="tab:blue", label=f"AUROC {auroc:.3f}")
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    axes.set_xlabel("false positive rate (normal data flagged)")
    axes.set_ylabel("true positive rate (novel data flagged)")
    axes.set_title(title)
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    axes.set_aspect("equal")
    return _save(figure, path), auroc


def scatter(
    points: np.ndarray,
    labels: np.ndarray | None,
    path: str | Path,
    title: str,
    axis_labels: tuple[str, str] = ("z₁", "z₂"),
) -> Path:
    """2-D points, coloured by integer labels with a legend (or plain without labels)."""
    figure = Figure(figsize=(6, 5.5))
    axes = figure.subplots()
    if labels is None:
        axes.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    else:
        for label in np.unique(labels):
            chosen = labels == label
            axes.scatter(points[chosen, 0], points[chosen, 1], s=4, alpha=0.6, label=str(label))
        axes.legend(title="label", markerscale=3, fontsize=8, loc="best")
    axes.set_xlabel(axis_labels[0])
    axes.set_ylabel(axis_labels[1])
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return _save(figure, path)
