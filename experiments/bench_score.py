"""Scoring speed: importance-sampled log p(x) with K = 5000 on the 10,000 MNIST test images.

A 784-400-50 Bernoulli VAE is trained briefly on binarized MNIST; then ``pyro_vae.log_likelihood``
estimates log p(x) of every test image with K importance samples (particles vectorized in an
outer plate, memory bounded by ``max_batch`` pairs at a time). The baseline is the plain way: a
Python loop over the K particles, each a traced model/guide pass over all the data; it is timed
on ``--loop-particles`` particles and scaled to K (its cost is linear in K).

The roofline: nearly all of the scoring's arithmetic is the decoder's two matrix products per
(particle, datum) pair, 2 (50 x 400 + 400 x 784) floating-point operations. The same run times
``torch.mm`` alone on exactly the shapes the scoring multiplies (one chunk of ``max_batch`` pairs
by each decoder weight), which is the rate no scoring of this model can beat on this machine;
``roofline_fraction`` is the scoring's achieved rate over it (the rest of the time goes to the
likelihood's and the guide's element-wise work and the log-sum-exp).

Prints wall time, peak resident memory, the speed-up and the roofline, and ends with one
``summary:`` line. ``--device cuda`` runs it on a GPU (times then synchronize the device).

    .venv/bin/python experiments/bench_score.py
"""

from __future__ import annotations

import argparse
import math
import resource
import time
from pathlib import Path

import pyro
import torch
from pyro import poutine

import pyro_vae
from pyro_vae.data import load_dataset
from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VAE
from pyro_vae.scoring import chunk_shape


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decoder_weights(model: VAE) -> list[torch.Tensor]:
    return [module.weight for module in model.decoder.modules() if isinstance(module, torch.nn.Linear)]


def pair_flops(model: VAE) -> int:
    """Floating-point operations of the decoder's matrix products for one (particle, datum) pair."""
    return sum(2 * weight.shape[0] * weight.shape[1] for weight in decoder_weights(model))


def matmul_rate(model: VAE, rows: int, device: torch.device, repeats: int = 20) -> float:
    """FLOP/s of ``torch.mm`` on the decoder's shapes, ``rows`` pairs at a time, into outputs
    allocated once (median of ``repeats``, after a warm-up): the ceiling of the scoring's
    arithmetic. (A fresh output of tens of megabytes costs page faults on every product, up to a
    fifth of the time on this machine's CPU: that is the scoring's overhead, not the ceiling.)"""
    operands = [
        (torch.randn(rows, w.shape[1], device=device), w.detach().t(), torch.empty(rows, w.shape[0], device=device))
        for w in decoder_weights(model)
    ]
    times = []
    for repeat in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        for left, right, out in operands:
            torch.mm(left, right, out=out)
        synchronize(device)
        if repeat >= 2:
            times.append(time.perf_counter() - start)
    return rows * pair_flops(model) / sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--num-samples", type=int, default=5000, help="K")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the scored VAE")
    parser.add_argument("--loop-particles", type=int, default=50, help="particles the baseline loop is timed on")
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--train-size", type=int, default=60000, help="training images of the scored VAE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="runs/bench_score", help="folder for results.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_dataset("mnist", args.data_dir)
    train_x = (data.train_x[: args.train_size] > 0.5).float()
    test_x = (data.test_x[: args.test_size] > 0.5).float().to(device)
    pyro.set_rng_seed(0)
    model = VAE.build((1, 28, 28), 50, [400], "mlp", "bernoulli")
    guide = AmortizedNormal.build((1, 28, 28), 50, [400], "mlp")
    pyro_vae.fit(model, guide, train_x, epochs=args.epochs, validation=None, progress=None, device=args.device)
    model.eval(), guide.eval()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    synchronize(device)
    start = time.perf_counter()
    log_px = pyro_vae.log_likelihood(model, guide, test_x, num_samples=args.num_samples, progress=None)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    chunk_rows = math.prod(chunk_shape(test_x, args.num_samples))
    ceiling = matmul_rate(model, chunk_rows, device)
    achieved = len(test_x) * args.num_samples * pair_flops(model) / seconds

    start = time.perf_counter()
    looped = loop_log_weights(model, guide, test_x, args.loop_particles)
    synchronize(device)
    loop_seconds = (time.perf_counter() - start) * args.num_samples / args.loop_particles
    # Sanity: the loop's estimate with its few particles is below ours (IS bounds tighten with K).
    loop_estimate = (looped.logsumexp(0) - math.log(args.loop_particles)).mean().item()

    report = [
        f"{len(test_x)} MNIST test images, K = {args.num_samples}: {seconds:.1f} s, log p(x) {log_px.mean():.2f}",
        f"peak resident memory {peak_gib:.2f} GiB (after training, before scoring: {rss_before:.2f} GiB)",
        f"per-particle loop: {loop_seconds:.0f} s (timed on {args.loop_particles} particles, scaled to K); "
        f"speed-up {loop_seconds / seconds:.1f}x; its K = {args.loop_particles} estimate {loop_estimate:.2f}",
        f"roofline: the decoder's matrix products alone run at {ceiling / 1e9:.1f} GFLOP/s on {chunk_rows} rows "
        f"({args.threads} threads, {device.type}); the scoring achieves {achieved / 1e9:.1f} GFLOP/s of them, "
        f"{achieved / ceiling:.0%}",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("# Scoring speed: bench_score.py\n\n" + "\n\n".join(report) + "\n")
    print("\n".join(report))
    print(
        f"summary: score_seconds={seconds:.1f} peak_gib={peak_gib:.2f} speedup={loop_seconds / seconds:.1f} "
        f"test_log_px={log_px.mean():.2f} matmul_gflops={ceiling / 1e9:.1f} score_gflops={achieved / 1e9:.1f} "
        f"roofline_fraction={achieved / ceiling:.2f} device={device.type}"
    )


if __name__ == "__main__":
    main()
