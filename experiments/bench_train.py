"""Training speed: a hand-written PyTorch VAE step against Pyro's stock SVI and pyro_vae.fit.

The same 784-400-50 MLP VAE with a Bernoulli likelihood, trained three ways on binarized MNIST:

(a) a hand-written PyTorch loop with the analytic-KL ELBO and ``torch.optim.Adam``'s defaults, as
    a user writes it (the speed to match);
(b) Pyro's stock ``SVI`` + ``Trace_ELBO``, model and guide written as in Pyro's VAE example;
(c) ``pyro_vae.fit`` with its defaults (stock ``VAE`` and ``AmortizedNormal``; ``FastSVI``, one
    fused Adam for all parameters);
(d) ``pyro_vae.fit(..., capture=True)``: the same step recorded once per minibatch shape and
    replayed (:mod:`pyro_vae.captured_step`); each timed block is the second epoch of a fit over
    the block, so that it holds replays only (the first steps a shape eagerly and records it).

For transparency, (a') is (a) with the fused Adam kernel that (c) and (d) use: (c)/(a') and
(d)/(a') are what the Pyro program costs over hand-written PyTorch with the same optimizer.

Every method trains on minibatches drawn in a shuffled order from the same block of images and
gathered by index, as ``fit`` does. For each batch size the methods are timed in rounds, each
running every method for one block of steps in a fresh random order (so drift in machine load,
large on shared cloud cores, hits all alike and no method always follows another); the median
time per step and the ratios to (a) are printed, with the process's peak resident memory and
one full MNIST epoch of (c) including its data handling. Ends with one ``summary:`` line.
``--device cuda`` runs every method on a GPU (each timed block then ends by synchronizing it).

    .venv/bin/python experiments/bench_train.py
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import resource
import statistics
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import pyro_vae
from pyro_vae.data import load_dataset
from pyro_vae.guides import AmortizedNormal
from pyro_vae.models import VAE

HIDDEN, LATENT = 400, 50


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(784, HIDDEN), nn.ReLU())
        self.loc, self.scale = nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)

    def forward(self, x):
        h = self.hidden(x)
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-4


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 784))

    def forward(self, z):
        return self.net(z)


def hand_written(device: torch.device, fused: bool = False):
    """(a): reparameterized sample, BCE with logits, analytic KL, Adam (its fused kernel: (a'))."""
    encoder, decoder = Encoder().to(device), Decoder().to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3, fused=fused or None)

    def step(x):
        loc, scale = encoder(x)
        z = loc + scale * torch.randn_like(loc)
        logits = decoder(z)
        nll = nn.functional.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="sum")
        kl = 0.5 * (loc**2 + scale**2 - 1).sum() - scale.log().sum()
        loss = nll + kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def pyro_example(device: torch.device):
    """(b): Pyro's VAE example style: pyro.module, a data plate, Trace_ELBO."""
    encoder, decoder = Encoder().to(device), Decoder().to(device)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x.flatten(1))

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    return svi.step


def pyro_vae_fit(batch_size: int, device: torch.device, capture: bool = False):
    """(c): ``pyro_vae.fit`` with its defaults, one epoch over a block of batches; returns the
    seconds per step of the epoch itself (``History.seconds``: without the one-off checks and
    set-up before the first step, which a long run amortizes). With ``capture`` (d), two epochs,
    timed on the second."""
    model = VAE.build((1, 28, 28), LATENT, [HIDDEN], "mlp", "bernoulli")
    guide = AmortizedNormal.build((1, 28, 28), LATENT, [HIDDEN], "mlp")

    def run(x: torch.Tensor) -> float:
        history = pyro_vae.fit(
            model,
            guide,
            x,
            epochs=2 if capture else 1,
            batch_size=batch_size,
            validation=None,
            progress=False,
            seed=None,
            device=device,
            capture=capture,
        )
        return history.seconds[-1] / math.ceil(len(x) / batch_size)

    return run


def time_steps(step, block: torch.Tensor, batch_size: int) -> float:
    """Seconds per step of one pass over ``block`` in shuffled minibatches (gathered by index, as
    ``pyro_vae.fit`` does, so every method pays for its data handling alike)."""
    start = time.perf_counter()
    order = torch.randperm(len(block), device=block.device).split(batch_size)
    for index in order:
        step(block[index])
    if block.is_cuda:
        torch.cuda.synchronize(block.device)
    return (time.perf_counter() - start) / len(order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--batch-sizes", type=lambda t: [int(v) for v in t.split(",")], default=[32, 128, 512])
    parser.add_argument("--steps", type=int, default=30, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of one block per method, per batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="runs/bench_train", help="folder for results.md")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pyro.set_rng_seed(0)
    order = random.Random(0)
    x_all = (load_dataset("mnist", args.data_dir).train_x > 0.5).float().to(device)
    results, report = {}, []
    for batch_size in args.batch_sizes:
        block = x_all[: batch_size * args.steps]
        pyro.clear_param_store()
        steppers = {"a": hand_written(device), "af": hand_written(device, fused=True), "b": pyro_example(device)}
        fits = {"c": pyro_vae_fit(batch_size, device), "d": pyro_vae_fit(batch_size, device, capture=True)}
        methods = {key: functools.partial(time_steps, step, block, batch_size) for key, step in steppers.items()}
        methods |= {key: functools.partial(fit_block, block) for key, fit_block in fits.items()}
        for step in steppers.values():  # warm-up
            time_steps(step, block[: 5 * batch_size], batch_size)
        for fit_block in fits.values():
            fit_block(block[: 5 * batch_size])
        times = {key: [] for key in methods}
        for _ in range(args.rounds):
            for key in order.sample(list(methods), len(methods)):
                times[key].append(methods[key]())
        medians = {key: statistics.median(values) for key, values in times.items()}
        results[batch_size] = medians
        report.append(
            f"batch {batch_size:4d}: hand-written {1e3 * medians['a']:.2f} ms (fused Adam: {1e3 * medians['af']:.2f}), "
            f"Pyro SVI {1e3 * medians['b']:.2f} ms ({medians['b'] / medians['a']:.2f}x), "
            f"pyro_vae.fit {1e3 * medians['c']:.2f} ms ({medians['c'] / medians['a']:.2f}x; "
            f"{medians['c'] / medians['af']:.2f}x the fused hand-written), captured {1e3 * medians['d']:.2f} ms "
            f"({medians['d'] / medians['a']:.2f}x; {medians['d'] / medians['af']:.2f}x the fused hand-written)"
        )
        print(report[-1], flush=True)
    start = time.perf_counter()
    pyro_vae_fit(128, device)(x_all)
    epoch_seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report += [
        f"one MNIST epoch with pyro_vae.fit (batch 128, data handling included): {epoch_seconds:.1f} s",
        f"peak resident memory of this process: {peak_gib:.2f} GiB",
    ]
    print("\n".join(report[-2:]))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.md").write_text("# Training speed: bench_train.py\n\n" + "\n\n".join(report) + "\n")
    ratios = " ".join(
        f"step_ratio_b{size}={m['c'] / m['a']:.2f} pyro_ratio_b{size}={m['b'] / m['a']:.2f} "
        f"fused_ratio_b{size}={m['c'] / m['af']:.2f} captured_ratio_b{size}={m['d'] / m['a']:.2f} "
        f"captured_fused_ratio_b{size}={m['d'] / m['af']:.2f}"
        for size, m in results.items()
    )
    print(f"summary: {ratios} mnist_epoch_seconds={epoch_seconds:.1f} peak_gib={peak_gib:.2f} device={device.type}")


if __name__ == "__main__":
    main()
