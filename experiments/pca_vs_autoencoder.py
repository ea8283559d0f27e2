"""PCA, a linear autoencoder and a linear Gaussian VAE: who finds the principal subspace?

1. Five 2-D toy points A (-0.50, -0.40), B (-0.40, -0.10), C (0.10, 0.00), D (0.30, 0.30),
   E (0.50, 0.20), projected to one dimension. PCA's codes are the projections on the first
   principal component. The linear VAE, p(z) = N(0, 1), p(x | z) = N(W z + b, σ² I) with an
   amortized linear Gaussian guide, is probabilistic PCA when trained to the optimum (Tipping &
   Bishop 1999; Lucas et al. 2019): its decoder column W must point along the first principal
   component, with length sqrt(λ₁ - σ²). The plain autoencoder (the same decoder with a point-mass
   guide) only needs some W and codes whose product reconstructs the data: the prior's penalty on
   the codes pulls them towards 0 while W grows, so it does not settle on the PCA solution.
2. The same comparison on MNIST with 2 and 20 latent dimensions: the largest principal angle
   between each decoder's column space and PCA's subspace, and test reconstruction error.

Writes ``toy.png`` and ``results.md`` to ``--out`` and ends with one ``summary:`` line.

    .venv/bin/python experiments/pca_vs_autoencoder.py
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
from scipy.linalg import subspace_angles
from torch import nn

import pyro_vae
from pyro_vae import latent
from pyro_vae.data import load_dataset
from pyro_vae.guides import AmortizedDelta, AmortizedNormal
from pyro_vae.models import VAE

TOY = torch.tensor([[-0.50, -0.40], [-0.40, -0.10], [0.10, 0.00], [0.30, 0.30], [0.50, 0.20]])
NAMES = "ABCDE"


def pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, the first ``k`` principal directions as columns (sign: first entry positive), and the
    variances along them."""
    mean = x.mean(0)
    _, singular, directions = np.linalg.svd(x - mean, full_matrices=False)
    components = directions[:k].T * np.sign(directions[:k, :1].T)
    return mean, components, singular[:k] ** 2 / len(x)


def linear_pair(x_shape, latent_dim: int, sigma: float, guide: str):
    """Linear decoder with Gaussian noise σ, and a linear Normal (VAE) or Delta (autoencoder) guide."""
    model = VAE.build(x_shape, latent_dim, [], "mlp", "gaussian", scale=sigma)
    kind = AmortizedNormal if guide == "normal" else AmortizedDelta
    return model, kind.build(x_shape, latent_dim, [], "mlp")


def decoder_weight(model: VAE) -> np.ndarray:
    """The decoder's linear map as a ``[data_dim, latent_dim]`` matrix."""
    (layer,) = [module for module in model.decoder.modules() if isinstance(module, nn.Linear)]
    return layer.weight.detach().double().numpy()


def angle_degrees(a: np.ndarray, b: np.ndarray, reduce=np.max) -> float:
    """The largest (or, with ``reduce``, e.g. the median) principal angle between the column
    spaces of ``a`` and ``b``."""
    return float(np.degrees(reduce(subspace_angles(a, b))))


def toy(args: argparse.Namespace, out: Path) -> dict:
    mean, components, variances = pca(TOY.numpy(), 1)
    pca_codes = (TOY.numpy() - mean) @ components[:, 0]
    results = {"pca_codes": pca_codes, "pca_direction": components[:, 0], "lambda1": variances[0]}
    for guide in ("normal", "delta"):
        pyro.set_rng_seed(args.seed)
        model, amortized = linear_pair((2,), 1, args.toy_sigma, guide)
        history = pyro_vae.fit(
            model, amortized, TOY, epochs=args.toy_steps, batch_size=5, lr=args.toy_lr, validation=None, progress=None
        )
        weight = decoder_weight(model)[:, 0]
        sign = np.sign(weight @ components[:, 0])
        codes = latent.encode(amortized, TOY).detach().double().numpy()[:, 0] * sign
        results[guide] = {
            "direction": weight * sign / np.linalg.norm(weight),
            "length": float(np.linalg.norm(weight)),
            "angle": angle_degrees(weight[:, None], components),
            "codes": codes,
            "reconstructions": latent.reconstruct(model, amortized, TOY).detach().numpy(),
            "elbo": history.train_elbo[-1],
        }
    plot_toy(results, out / "toy.png")
    return results


def plot_toy(results: dict, path: Path) -> None:
    figure, axes = plt.subplots(figsize=(6, 5))
    points = TOY.numpy()
    axes.scatter(points[:, 0], points[:, 1], color="black", zorder=3, label="data")
    for name, (px, py) in zip(NAMES, points, strict=True):
        axes.annotate(name, (px, py), textcoords="offset points", xytext=(5, 5))
    line = np.linspace(-0.8, 0.8, 2)
    styles = {"PCA, 1st component": ("tab:blue", "-"), "linear VAE decoder": ("tab:orange", "--")}
    directions = {"PCA, 1st component": results["pca_direction"], "linear VAE decoder": results["normal"]["direction"]}
    directions["autoencoder decoder"] = results["delta"]["direction"]
    styles["autoencoder decoder"] = ("tab:green", ":")
    for label, direction in directions.items():
        colour, style = styles[label]
        axes.plot(line * direction[0], line * direction[1], color=colour, linestyle=style, label=label)
    recon = results["normal"]["reconstructions"]
    axes.scatter(recon[:, 0], recon[:, 1], marker="x", color="tab:orange", label="VAE reconstructions")
    axes.set_xlabel("x₁")
    axes.set_ylabel("x₂")
    axes.set_aspect("equal")
    axes.set_xlim(-0.8, 0.8)
    axes.set_ylim(-0.6, 0.6)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    axes.set_title("Toy points projected to 1-D: PCA, linear VAE, linear autoencoder")
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def mnist(args: argparse.Namespace) -> list[dict]:
    data = load_dataset("mnist", args.mnist_dir)
    train = data.train_x[: args.mnist_train].flatten(1)
    test = data.test_x[:2000].flatten(1)
    rows = []
    for k in (2, 20):
        mean, components, _ = pca(train.double().numpy(), k)
        projected = (test.double().numpy() - mean) @ components @ components.T + mean
        mse = float(((projected - test.numpy()) ** 2).mean())
        rows.append({"k": k, "method": "PCA", "angle": 0.0, "median_angle": 0.0, "mse": mse})
        for guide, method in (("normal", "linear VAE"), ("delta", "linear autoencoder")):
            pyro.set_rng_seed(args.seed)
            model, amortized = linear_pair((784,), k, args.mnist_sigma, guide)
            pyro_vae.fit(
                model, amortized, train, epochs=args.mnist_epochs, lr=args.mnist_lr, validation=None, progress=None
            )
            reconstruction = latent.reconstruct(model, amortized, test).detach()
            rows.append(
                {
                    "k": k,
                    "method": method,
                    "angle": angle_degrees(decoder_weight(model), components),
                    "median_angle": angle_degrees(decoder_weight(model), components, np.median),
                    "mse": float(((reconstruction - test) ** 2).mean()),
                }
            )
            print(f"MNIST k={k} {method}: {rows[-1]}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy-steps", type=int, default=3000, help="SVI steps on the five points")
    parser.add_argument("--toy-lr", type=float, default=0.01)
    parser.add_argument("--toy-sigma", type=float, default=0.1, help="decoder noise σ on the toy points")
    parser.add_argument("--mnist-dir", default="../shared/data/mnist")
    parser.add_argument("--mnist-train", type=int, default=20000, help="training images used")
    parser.add_argument("--mnist-epochs", type=int, default=40)
    parser.add_argument("--mnist-lr", type=float, default=3e-3)
    parser.add_argument("--mnist-sigma", type=float, default=0.1, help="decoder noise σ on MNIST")
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/pca_vs_autoencoder")
    args = parser.parse_args()

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = toy(args, out)
    expected_length = math.sqrt(max(results["lambda1"] - args.toy_sigma**2, 0.0))
    scale, offset = np.polyfit(results["pca_codes"], results["delta"]["codes"], 1)
    shrinkage = results["normal"]["length"] / (results["normal"]["length"] ** 2 + args.toy_sigma**2)
    lines = [
        "# PCA, linear autoencoder and linear VAE",
        "",
        f"## Five toy points, 1-D codes (σ = {args.toy_sigma}, {args.toy_steps} SVI steps)",
        "",
        "| point | data | PCA code | linear VAE code | autoencoder code | VAE reconstruction |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for index, name in enumerate(NAMES):
        data_point = ", ".join(f"{value:.2f}" for value in TOY[index].tolist())
        recon = ", ".join(f"{value:.2f}" for value in results["normal"]["reconstructions"][index])
        lines.append(
            f"| {name} | ({data_point}) | {results['pca_codes'][index]:.2f} | {results['normal']['codes'][index]:.2f} "
            f"| {results['delta']['codes'][index]:.2f} | ({recon}) |"
        )
    lines += [
        "",
        "| method | angle to PCA's 1st component | decoder length |W| |",
        "| --- | ---: | ---: |",
        f"| linear VAE | {results['normal']['angle']:.2f}° | {results['normal']['length']:.3f} "
        f"(pPCA optimum sqrt(λ₁ - σ²) = {expected_length:.3f}) |",
        f"| linear autoencoder | {results['delta']['angle']:.2f}° | {results['delta']['length']:.3f} (no optimum: "
        "grows while the codes shrink) |",
        "",
        "The VAE's codes are posterior means, shrunk towards the prior: PCA's codes times "
        f"|W| / (|W|² + σ²) = {shrinkage:.2f} "
        "(the pPCA posterior mean). The autoencoder's decoder points along the principal direction "
        "too (a linear autoencoder's optimum spans the principal subspace; Baldi & Hornik 1989), but "
        f"its codes are PCA's up to an arbitrary scale and offset (here {scale:.2f} x PCA {offset:+.2f}) "
        "and |W| keeps growing as the prior shrinks the codes: it does not converge to PCA's solution.",
        "",
        "![toy points](toy.png)",
    ]
    mnist_summary = ""
    if not args.skip_mnist:
        lines += [
            "",
            f"## MNIST, {args.mnist_train} training images, {args.mnist_epochs} epochs, σ = {args.mnist_sigma}",
            "",
            "| latent | method | principal angles to PCA's subspace: largest, median | test reconstruction MSE |",
            "| ---: | --- | ---: | ---: |",
        ]
        rows = mnist(args)
        for row in rows:
            angles = f"{row['angle']:.1f}°, {row['median_angle']:.1f}°"
            lines.append(f"| {row['k']} | {row['method']} | {angles} | {row['mse']:.4f} |")
        pca_mse = {row["k"]: row["mse"] for row in rows if row["method"] == "PCA"}
        learned = [row for row in rows if row["method"] != "PCA"]
        largest = [row["angle"] for row in learned]
        excess = max(100 * (row["mse"] / pca_mse[row["k"]] - 1) for row in learned)
        mnist_summary = (
            f" mnist_largest_angle_min_deg={min(largest):.1f} mnist_largest_angle_max_deg={max(largest):.1f}"
            f" mnist_mse_excess_max_pct={excess:.2f}"
        )
    minutes = (time.perf_counter() - started) / 60
    lines += ["", f"Wall time {minutes:.1f} min."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    codes = ",".join(f"{value:.2f}" for value in results["pca_codes"])
    print(
        f"summary: linear_vae_angle_deg={results['normal']['angle']:.2f} pca_codes={codes} "
        f"autoencoder_angle_deg={results['delta']['angle']:.2f} linear_vae_length={results['normal']['length']:.3f} "
        f"ppca_length={expected_length:.3f} autoencoder_length={results['delta']['length']:.3f}{mnist_summary} "
        f"minutes={minutes:.1f}"
    )


if __name__ == "__main__":
    main()
