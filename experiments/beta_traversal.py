"""β-VAE latent traversals on MNIST: β = 1 against β = 4 (Higgins et al. 2017).

Two VAEs with a 10-d latent are trained on binarized MNIST, one with the ELBO (β = 1) and one
with the KL term weighted by β = 4. For one test digit, each latent dimension is set in turn to
values from -3 to 3 around its posterior mean and decoded. A larger β presses q(z | x) towards
the prior: fewer dimensions stay active, and those that do change the digit in broader,
smoother ways. Dimensions are shown in order of their KL to the prior (most informative first).

Writes ``beta1_traversal.png``, ``beta4_traversal.png`` and ``results.md`` to ``--out`` and ends
with one ``summary:`` line.

    .venv/bin/python experiments/beta_traversal.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import binarized_mnist, train_vae

import pyro_vae
from pyro_vae import plots
from pyro_vae.latent import traverse

ACTIVE_KL = 0.05  # nats: a dimension with less KL to the prior carries (almost) nothing


def kl_per_dimension(guide, x: torch.Tensor) -> torch.Tensor:
    """Mean KL(q(z_d | x) || N(0, 1)) over the data, per latent dimension, in nats."""
    with torch.no_grad():
        q = guide.posterior(x).base_dist
    return (0.5 * (q.loc**2 + q.scale**2 - 1) - q.scale.log()).mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--betas", type=lambda text: [float(v) for v in text.split(",")], default=[1.0, 4.0])
    parser.add_argument("--index", type=int, default=0, help="test digit to traverse from")
    parser.add_argument("--steps", type=int, default=9, help="values per dimension, from -3 to 3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/beta_traversal")
    args = parser.parse_args()

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = binarized_mnist(args.data_dir)
    values = torch.linspace(-3, 3, args.steps).tolist()
    results = {}
    for beta in args.betas:
        model, guide = train_vae(data.train_x, args.latent_dim, args.epochs, beta=beta, seed=args.seed)
        kl = kl_per_dimension(guide, data.test_x)
        order = kl.argsort(descending=True)
        with torch.no_grad():
            grid = traverse(model, guide, data.test_x[args.index], values)[order]
        name = f"beta{beta:g}_traversal.png"
        plots.image_grid(
            grid.reshape(-1, *grid.shape[2:]),
            out / name,
            f"β = {beta:g}: one row per latent dimension (largest KL first), values -3 to 3",
            columns=args.steps,
        )
        elbo = pyro_vae.elbo(model, guide, data.test_x, num_samples=1).mean().item()
        results[beta] = {"kl": kl[order], "active": int((kl > ACTIVE_KL).sum()), "elbo": elbo, "figure": name}
        print(f"β = {beta:g}: {results[beta]['active']} active dimensions, test ELBO {elbo:.1f}", flush=True)

    minutes = (time.perf_counter() - started) / 60
    lines = [
        "# β-VAE traversals on MNIST",
        "",
        f"MLP 512-256, {args.latent_dim}-d latent, {args.epochs} epochs on binarized MNIST. Test digit #{args.index}.",
        "",
        f"| β | active dimensions (KL > {ACTIVE_KL} nats) | KL per dimension, sorted (nats) | test ELBO at β = 1 |",
        "| ---: | ---: | --- | ---: |",
    ]
    for beta, result in results.items():
        kl_text = ", ".join(f"{value:.2f}" for value in result["kl"].tolist())
        lines.append(f"| {beta:g} | {result['active']} | {kl_text} | {result['elbo']:.1f} |")
    lines += [""] + [f"![β = {beta:g}]({result['figure']})" for beta, result in results.items()]
    lines += ["", f"Wall time {minutes:.1f} min."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    parts = " ".join(f"active_dims_beta{beta:g}={result['active']}" for beta, result in results.items())
    print(f"summary: {parts} minutes={minutes:.1f}")


if __name__ == "__main__":
    main()
