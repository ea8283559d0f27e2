"""What a trained run writes about its data: per-datum scores, the most novel data, figures."""

from __future__ import annotations

import copy
import csv
import warnings
from pathlib import Path

import numpy as np
import torch

from pyro_vae import plots
from pyro_vae.conditional import ClassScores, class_scores
from pyro_vae.diagnostics import importance_scores
from pyro_vae.gan import Generator
from pyro_vae.scoring import elbo

TOP = 10


def score_name(config: dict) -> str:
    """What the importance-sampled score is: log p(x), or with a point-mass (delta) guide only
    log p(x, ẑ) at the encoded ẑ."""
    return "log p(x, ẑ)" if config.get("guide") == "delta" else "log p(x)"


def novelty_order(scores: np.ndarray) -> np.ndarray:
    """Indices from most to least novel (lowest score first); a score that is not a number (NaN)
    counts as the most novel of all, never the least."""
    return np.argsort(np.where(np.isnan(scores), -np.inf, scores), kind="stable")


def rankable(scores: np.ndarray) -> np.ndarray:
    """``scores`` with the non-finite ones (NaN, ±inf: data that could not be scored) put just
    below the lowest finite score, as the most novel, for rank-based measures such as the AUROC."""
    finite = scores[np.isfinite(scores)]
    lowest = finite.min() - 1.0 if finite.size else 0.0
    return np.where(np.isfinite(scores), scores, lowest)


def _scores(model, guide, x: torch.Tensor, num_samples: int, progress: bool | None) -> np.ndarray:
    """Rows of log p(x), its Pareto-k̂ and the ELBO, one per datum."""
    scores = importance_scores(model, guide, x, num_samples=num_samples, progress=progress)
    elbos = elbo(model, guide, x, num_samples=1).cpu().numpy()
    return np.stack([scores.log_likelihood, scores.pareto_k, elbos], axis=1).astype(np.float64)


def _per_datum_scores(model, guide, x: torch.Tensor, num_samples: int, progress: bool | None) -> np.ndarray:
    """:func:`_scores` of a float32 pair; data whose float32 scores are not finite (finite values
    near float32's limit, whose squares overflow) are scored again in float64, by copies of the
    pair, from ``x`` as given (pass float64 data to keep values beyond float32's range)."""
    low = x.float()
    fits = torch.isfinite(low.flatten(1)).all(1).cpu().numpy()
    table = np.full((len(x), 3), np.nan)
    if fits.any():
        with warnings.catch_warnings():  # an overflow here is expected, and handled below
            warnings.filterwarnings("ignore", message="Encountered NaN")
            table[fits] = _scores(model, guide, low[torch.from_numpy(fits).to(x.device)], num_samples, progress)
    again = ~np.isfinite(table[:, [0, 2]]).all(1)
    if again.any():
        double = [part.double() for part in copy.deepcopy((model, guide))]  # one copy: parts that share stay shared
        table[again] = _scores(*double, x[torch.from_numpy(again).to(x.device)].double(), num_samples, None)
    return table


def score_table(
    model, guide, x: torch.Tensor, labels: torch.Tensor | None, num_samples: int, progress: bool | None = None
) -> list[dict[str, float | int | str]]:
    """Per-datum ELBO and importance-sampled log p(x) with the Pareto-k̂ of its weights, most
    novel (lowest log p(x)) first. Every finite datum gets a finite score where float64 allows
    (:func:`_per_datum_scores`); a datum that still cannot be scored ranks as the most novel."""
    table = _per_datum_scores(model, guide, x, num_samples, progress)
    log_px, pareto_k, elbos = table.T
    order = novelty_order(log_px)
    return [
        {
            "rank": rank + 1,
            "index": int(index),
            "label": "" if labels is None else int(labels[index]),
            "log_likelihood": float(log_px[index]),
            "elbo": float(elbos[index]),
            "pareto_k": float(pareto_k[index]),
        }
        for rank, index in enumerate(order)
    ]


def write_csv(rows: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def novelty_report(
    rows: list[dict],
    x: torch.Tensor,
    out: Path,
    name: str,
    score: str = "log p(x)",
    stem: str = "novelty",
    key: str = "log_likelihood",
) -> list[Path]:
    """Write ``<stem>.csv`` (every datum, most novel first), a histogram of the scores (column
    ``key``, described by ``score``) with the ten most novel marked, and for images a grid of
    those ten with their scores."""
    scores = np.array([row[key] for row in rows])
    labels = [row.get("label", "") for row in rows]
    groups = np.array(labels, dtype=np.int64) if labels and set(labels) <= {0, 1} else None
    written = [write_csv(rows, out / f"{stem}.csv")]
    written.append(
        plots.score_histogram(
            scores,
            out / f"{stem}_histogram.png",
            f"{name}: importance-sampled {score}",
            marked=scores[:TOP],
            label=score,
            groups=groups,
        )
    )
    if x.dim() == 4:
        top = rows[:TOP]
        captions = [
            f"#{row['index']}" + (f" ({row['label']})" if row["label"] != "" else "") + f"\n{row[key]:.1f}"
            for row in top
        ]
        written.append(
            plots.image_grid(
                x[[row["index"] for row in top]].cpu(),
                out / f"{stem}_top{TOP}.png",
                f"{name}: the {len(top)} most novel (index (label), {score} in nats)",
                columns=5,
                captions=captions,
            )
        )
    return written


def conditional_score_table(
    model, guide, x: torch.Tensor, labels: torch.Tensor | None, num_classes: int, num_samples: int, progress=None
) -> tuple[list[dict], ClassScores]:
    """Per-datum log p(x) with the label summed out, most novel first; with labels, also the
    novelty against the given label: log p(x | y) and p(y | x)."""
    scores = class_scores(model, guide, x, num_classes, num_samples, progress=progress)
    log_px = scores.log_px.cpu().numpy()
    predicted = scores.predict().cpu().numpy()
    given = None if labels is None else [value.cpu().numpy() for value in scores.claimed(labels.to(x.device))]
    rows = []
    for rank, index in enumerate(novelty_order(log_px)):
        row = {
            "rank": rank + 1,
            "index": int(index),
            "label": "" if labels is None else int(labels[index]),
            "predicted": int(predicted[index]),
            "log_likelihood": float(log_px[index]),
        }
        if given is not None:
            row["log_likelihood_given_label"] = float(given[0][index])
            row["label_posterior"] = float(given[1][index])
        rows.append(row)
    return rows, scores


def class_grid(model, num_classes: int, draws: int, path: Path, title: str) -> Path:
    """One row per class, one column per latent draw (the same z down each column)."""
    z = model.prior().sample((draws,)).repeat(num_classes, 1)
    labels = torch.arange(num_classes, device=z.device).repeat_interleave(draws)
    with torch.no_grad():
        images = model.decode(z, labels)
    return plots.image_grid(images, path, title, columns=draws)


def gan_class_grid(generator: Generator, num_classes: int, draws: int, path: Path, title: str) -> Path:
    """A class-conditional generator's samples: one row per class, one column per z (the same z
    down each column)."""
    parameter = next(generator.parameters())
    z = torch.randn(draws, generator.latent_dim, device=parameter.device).repeat(num_classes, 1)
    labels = torch.arange(num_classes, device=z.device).repeat_interleave(draws)
    with torch.no_grad():
        images = generator(z, labels)
    return plots.image_grid(images, path, title, columns=draws)


def style_transfer(model, guide, x: torch.Tensor, y: torch.Tensor, num_classes: int, path: Path, title: str) -> Path:
    """The data in the top row; below, each datum's z (encoded with its own label) decoded as
    every class in turn: the style is kept, the class changes."""
    with torch.no_grad():
        z = guide.posterior(x, y).mean
        rows = [model.decode(z, torch.full_like(y, label)) for label in range(num_classes)]
    return plots.image_grid(torch.cat([x, *rows]), path, title, columns=len(x))
