"""What a trained run writes about its data: per-datum scores, the most novel data, figures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from pyro_vae import plots
from pyro_vae.scoring import elbo, log_likelihood

TOP = 10


def score_name(config: dict) -> str:
    """What the importance-sampled score is: log p(x), or with a point-mass (delta) guide only
    log p(x, ẑ) at the encoded ẑ."""
    return "log p(x, ẑ)" if config.get("guide") == "delta" else "log p(x)"


def score_table(
    model, guide, x: torch.Tensor, labels: torch.Tensor | None, num_samples: int, progress: bool | None = None
) -> list[dict[str, float | int | str]]:
    """Per-datum ELBO and importance-sampled log p(x), most novel (lowest log p(x)) first."""
    log_px = log_likelihood(model, guide, x, num_samples=num_samples, progress=progress).cpu().numpy()
    elbos = elbo(model, guide, x, num_samples=1).cpu().numpy()
    order = np.argsort(log_px, kind="stable")
    return [
        {
            "rank": rank + 1,
            "index": int(index),
            "label": "" if labels is None else int(labels[index]),
            "log_likelihood": float(log_px[index]),
            "elbo": float(elbos[index]),
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
    rows: list[dict], x: torch.Tensor, out: Path, name: str, score: str = "log p(x)", stem: str = "novelty"
) -> list[Path]:
    """Write ``<stem>.csv`` (every datum, most novel first), a histogram of the scores with the
    ten most novel marked, and for images a grid of those ten with their scores."""
    scores = np.array([row["log_likelihood"] for row in rows])
    written = [write_csv(rows, out / f"{stem}.csv")]
    written.append(
        plots.score_histogram(
            scores,
            out / f"{stem}_histogram.png",
            f"{name}: importance-sampled {score}",
            marked=scores[:TOP],
            label=score,
        )
    )
    if x.dim() == 4:
        top = rows[:TOP]
        captions = [
            f"#{row['index']}" + (f" ({row['label']})" if row["label"] != "" else "") + f"\n{row['log_likelihood']:.1f}"
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
