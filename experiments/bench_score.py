"""Scoring speed: importance-sampled log p(x) with K = 5000 on the 10,000 MNIST test images.

A 784-400-50 Bernoulli VAE is trained briefly on binarized MNIST; then ``pyro_vae.log_likelihood``
estimates log p(x) of every test image with K importance samples (particles vectorized in an
outer plate, memory bounded by ``max_batch`` pairs at a time). The baseline is the plain way: a
Python loop over the K particles, each a traced model/guide pass over all the data; it is timed
on ``--loop-particles`` particles and scaled to K (its cost is linear in K). Prints wall time,
peak resident memory and the speed-up, and ends with one ``summary:`` line.

    .venv/bin/python experiments/bench_score.py
"""

from __future__ import annotations

import argparse
import math
import resource
import time

import pyro
import torch
from pyro import poutine

import pyro_vae
from pyro_vae.data import load_dataset
from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VAE


def loop_log_weights(model, guide, x: torch.Tensor, particles: int) -> torch.Tensor:
    """log w_k per datum, one traced pass per particle: the baseline."""
    weights = []
    with torch.no_grad():
        for _ in range(particles):
            guide_trace = poutine.trace(guide).get_trace(x, size=len(x))
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, size=len(x))
            log_p = model_trace.nodes["z"]["fn"].log_prob(model_trace.nodes["z"]["value"])
            log_p = log_p + model_trace.nodes["x"]["fn"].log_prob(x)
            log_q = guide_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"])
            weights.append(log_p - log_q)
    return torch.stack(weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--num-samples", type=int, default=5000, help="K")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the scored VAE")
    parser.add_argument("--loop-particles", type=int, default=50, help="particles the baseline loop is timed on")
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", args.data_dir)
    train_x, test_x = (data.train_x > 0.5).float(), (data.test_x[: args.test_size] > 0.5).float()
    pyro.set_rng_seed(0)
    model = VAE.build((1, 28, 28), 50, [400], "mlp", "bernoulli")
    guide = AmortizedNormal.build((1, 28, 28), 50, [400], "mlp")
    pyro_vae.fit(model, guide, train_x, epochs=args.epochs, validation=None, progress=None)
    model.eval(), guide.eval()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    start = time.perf_counter()
    log_px = pyro_vae.log_likelihood(model, guide, test_x, num_samples=args.num_samples, progress=None)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    start = time.perf_counter()
    looped = loop_log_weights(model, guide, test_x, args.loop_particles)
    loop_seconds = (time.perf_counter() - start) * args.num_samples / args.loop_particles
    # Sanity: the loop's estimate with its few particles is below ours (IS bounds tighten with K).
    loop_estimate = (looped.logsumexp(0) - math.log(args.loop_particles)).mean().item()

    print(f"{len(test_x)} MNIST test images, K = {args.num_samples}: {seconds:.1f} s, log p(x) {log_px.mean():.2f}")
    print(f"peak resident memory {peak_gib:.2f} GiB (after training, before scoring: {rss_before:.2f} GiB)")
    print(
        f"per-particle loop: {loop_seconds:.0f} s (timed on {args.loop_particles} particles, scaled to K); "
        f"speed-up {loop_seconds / seconds:.1f}x; its K = {args.loop_particles} estimate {loop_estimate:.2f}"
    )
    print(
        f"summary: score_seconds={seconds:.1f} peak_gib={peak_gib:.2f} speedup={loop_seconds / seconds:.1f} "
        f"test_log_px={log_px.mean():.2f}"
    )


if __name__ == "__main__":
    main()
