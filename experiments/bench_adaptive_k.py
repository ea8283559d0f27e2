"""Adaptive K against a fixed K = 5000 on the 10,000 MNIST test images.

The scored VAE is bench_score.py's (784-400-50, Bernoulli, binarized MNIST, 3 epochs). In one run:
``pyro_vae.log_likelihood`` with a fixed K (``--num-samples``), then with K adapted per datum
(``tolerance``: the first round's ``--first-samples`` particles, doubled for every datum whose
standard error is above the tolerance, up to ``--max-samples``; :mod:`pyro_vae.adaptive_k`).
Reported: the gap between the two mean log p(x) (target: within 0.05 nats), the ratio of particle
evaluations, fixed over adaptive (target: at least 5), the ratio of wall times, and how many
images reached the cap. Writes ``results.md`` to ``--out`` and ends with one ``summary:`` line.

    .venv/bin/python experiments/bench_adaptive_k.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import binarized_mnist, train_vae

import pyro_vae
from pyro_vae.scoring import adaptive_log_likelihood


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--num-samples", type=int, default=5000, help="the fixed K")
    parser.add_argument("--tolerance", type=float, default=0.05, help="standard error per datum, nats")
    parser.add_argument("--first-samples", type=int, default=100, help="adaptive: the first round's K")
    parser.add_argument("--max-samples", type=int, default=5000, help="adaptive: the most particles per datum")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the scored VAE")
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--train-size", type=int, help="train on the first this many images only (smoke tests)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_adaptive_k")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = binarized_mnist(args.data_dir)
    test_x = data.test_x[: args.test_size]
    model, guide = train_vae(data.train_x[: args.train_size], 50, args.epochs, hidden=(400,))

    pyro_vae.log_likelihood(model, guide, test_x[:100], num_samples=100)  # warm-up, so neither timing pays it
    start = time.perf_counter()
    fixed = pyro_vae.log_likelihood(model, guide, test_x, num_samples=args.num_samples, progress=None)
    fixed_seconds = time.perf_counter() - start
    start = time.perf_counter()
    adaptive = adaptive_log_likelihood(
        model, guide, test_x, tolerance=args.tolerance, first_samples=args.first_samples,
        max_samples=args.max_samples, progress=None,
    )  # fmt: skip
    adaptive_seconds = time.perf_counter() - start

    counts = adaptive.num_samples.double()
    gap = (adaptive.log_likelihood.mean() - fixed.mean()).item()
    evaluation_ratio = args.num_samples * len(test_x) / counts.sum().item()
    at_max = int((adaptive.num_samples >= args.max_samples).sum())
    print(
        f"{len(test_x)} MNIST test images; fixed K = {args.num_samples}: log p(x) {fixed.mean():.3f} "
        f"in {fixed_seconds:.0f} s"
    )
    print(
        f"adaptive (tolerance {args.tolerance:g} nats, K from {args.first_samples} to {args.max_samples}): "
        f"log p(x) {adaptive.log_likelihood.mean():.3f} in {adaptive_seconds:.0f} s; mean K {counts.mean():.0f}, "
        f"median {counts.median():.0f}, {at_max} images at the cap"
    )
    print(
        f"gap {gap:+.3f} nats; {evaluation_ratio:.1f}x fewer particle evaluations, "
        f"{fixed_seconds / adaptive_seconds:.1f}x less time"
    )
    rows = [
        ("fixed", f"{args.num_samples}", f"{fixed.mean():.3f}", "", f"{fixed_seconds:.0f}"),
        ("adaptive", f"{counts.mean():.0f} (median {counts.median():.0f}, {at_max} at the cap)",
         f"{adaptive.log_likelihood.mean():.3f}", f"{gap:+.3f}", f"{adaptive_seconds:.0f}"),
    ]  # fmt: skip
    table = ["| K | particles per image | mean log p(x) | gap | seconds |", "| --- | --- | ---: | ---: | ---: |"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(
        f"{len(test_x)} MNIST test images; adaptive: tolerance {args.tolerance:g} nats, K from {args.first_samples} "
        f"to {args.max_samples}; {evaluation_ratio:.1f}x fewer particle evaluations.\n\n" + "\n".join(table) + "\n"
    )
    print(
        f"summary: adaptive_gap={gap:.3f} evaluation_ratio={evaluation_ratio:.2f} "
        f"seconds_ratio={fixed_seconds / adaptive_seconds:.2f} mean_samples={counts.mean():.0f} at_max={at_max} "
        f"fixed_log_px={fixed.mean():.3f} adaptive_log_px={adaptive.log_likelihood.mean():.3f} "
        f"fixed_seconds={fixed_seconds:.0f} adaptive_seconds={adaptive_seconds:.0f}"
    )


if __name__ == "__main__":
    main()
