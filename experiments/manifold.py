"""Learned 2-D manifolds of Frey Face and MNIST, as in Kingma & Welling (2014), Figure 4.

A VAE with a 2-D latent is trained on each data set; a grid of points spaced evenly on the unit
square is mapped through the inverse Gaussian CDF (so it covers the prior by quantiles) and
decoded. Neighbouring images change smoothly: pose and expression for faces, digit identity and
slant for MNIST. Also writes the MNIST test digits' posterior means coloured by class.

Writes ``frey_manifold.png``, ``mnist_manifold.png``, ``mnist_scatter.png`` and ``results.md``
to ``--out`` and ends with one ``summary:`` line.

    .venv/bin/python experiments/manifold.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import binarized_mnist, train_vae

import pyro_vae
from pyro_vae import plots
from pyro_vae.data import load_dataset
from pyro_vae.latent import latent_scatter, manifold_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frey-dir", default="../shared/data/frey-face")
    parser.add_argument("--mnist-dir", default="../shared/data/mnist")
    parser.add_argument("--frey-epochs", type=int, default=300)
    parser.add_argument("--mnist-epochs", type=int, default=10)
    parser.add_argument("--points", type=int, default=15, help="grid points per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/manifold")
    args = parser.parse_args()

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frey = load_dataset("frey", args.frey_dir)
    # A continuous Bernoulli keeps every decoded mean inside [0, 1]; a Gaussian's unbounded mean
    # saturates (clamped speckle) in the corners of the grid, where the data are sparse.
    model, guide = train_vae(
        frey.train_x, 2, args.frey_epochs, likelihood="continuous-bernoulli", hidden=(200,), seed=args.seed
    )
    frey_elbo = pyro_vae.elbo(model, guide, frey.test_x, num_samples=10).mean().item()
    with torch.no_grad():
        faces = manifold_grid(model, args.points)
    plots.image_grid(faces, out / "frey_manifold.png", "Frey Face: decoded 2-D latent grid", columns=args.points)

    mnist = binarized_mnist(args.mnist_dir)
    model, guide = train_vae(mnist.train_x, 2, args.mnist_epochs, seed=args.seed)
    mnist_elbo = pyro_vae.elbo(model, guide, mnist.test_x, num_samples=1).mean().item()
    with torch.no_grad():
        digits = manifold_grid(model, args.points)
    plots.image_grid(digits, out / "mnist_manifold.png", "MNIST: decoded 2-D latent grid", columns=args.points)
    latent_scatter(guide, mnist.test_x[:5000], mnist.test_y[:5000], out / "mnist_scatter.png", "MNIST test: 2-D z")

    minutes = (time.perf_counter() - started) / 60
    lines = [
        "# 2-D latent manifolds (Kingma & Welling 2014, Figure 4)",
        "",
        f"Grids of {args.points} x {args.points} points u on [0.05, 0.95]², z = Φ⁻¹(u), decoded (mean of p(x | z)); "
        "z₁ grows left to right, z₂ top to bottom.",
        "",
        "| data | model | epochs | test ELBO (nats per image) |",
        "| --- | --- | ---: | ---: |",
        f"| Frey Face (28 x 20) | MLP 200, continuous Bernoulli | {args.frey_epochs} | {frey_elbo:.1f} |",
        f"| MNIST, binarized | MLP 512-256, Bernoulli | {args.mnist_epochs} | {mnist_elbo:.1f} |",
        "",
        "![Frey Face manifold](frey_manifold.png)",
        "![MNIST manifold](mnist_manifold.png)",
        "![MNIST latent scatter](mnist_scatter.png)",
        "",
        f"Wall time {minutes:.1f} min.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"summary: frey_test_elbo={frey_elbo:.1f} mnist_test_elbo={mnist_elbo:.1f} minutes={minutes:.1f}")


if __name__ == "__main__":
    main()
