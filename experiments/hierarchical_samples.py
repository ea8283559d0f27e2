"""Samples of a hierarchical VAE beside a single-layer one, on MNIST, Fashion-MNIST and Frey Face.

For each data set both models (MLP networks of the same widths; the single-layer VAE with one
``--latent-dim`` code, the hierarchical one with ``--layers`` codes of that size, top-down
inference, ``models/hierarchical.py``) train for the same budget of minutes on the training images
binarized afresh in every minibatch (dynamic binarization, Bernoulli likelihood; the grey levels of
Frey Face are the Bernoulli means), with early stopping on 10 % held out. Each model is trained once
per KL warm-up length of ``--warmup`` (epochs of a linear β ramp from 0 to 1), and the one with the
best held-out ELBO is kept: the warm-up is chosen on held-out training images, never on the test
images. Then each kept model draws 64 samples x ~ p(x) by ancestral sampling, shown as the means of
p(x | z), and the test log p(x) of 1,000 test images binarized once (K = ``--num-samples``
importance samples) is measured.

Writes ``samples.png`` (one row per data set, the single-layer model left, the hierarchical one
right) and ``results.md`` to ``--out``, and ends with one ``summary:`` line.

    .venv/bin/python experiments/hierarchical_samples.py --minutes 4
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure

import pyro_vae
from pyro_vae.data import load_dataset
from pyro_vae.guides import AmortizedNormal, TopDownGuide
from pyro_vae.models import VAE, HierarchicalVAE

DATASETS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "frey": "frey-face"}
KINDS = ("single", "hierarchical")
SAMPLES = 64
TEST_ROWS = 1000


def build(kind: str, shape: tuple[int, ...], args: argparse.Namespace):
    hidden = [int(width) for width in args.hidden.split(",")]
    if kind == "hierarchical":
        model = HierarchicalVAE.build(shape, args.latent_dim, hidden, "mlp", "bernoulli", args.layers)
        return model, TopDownGuide.build_for(model, shape, hidden, "mlp")
    return VAE.build(shape, args.latent_dim, hidden, "mlp", "bernoulli"), AmortizedNormal.build(
        shape, args.latent_dim, hidden, "mlp"
    )


def trained(kind: str, train: torch.Tensor, warmup: float, args: argparse.Namespace):
    """A pair of ``kind`` trained with ``warmup`` epochs of KL warm-up, and its history."""
    pyro.set_rng_seed(args.seed)
    model, guide = build(kind, tuple(train.shape[1:]), args)
    generator = torch.Generator().manual_seed(args.seed)
    held_out = torch.randperm(len(train), generator=generator)[: len(train) // 10]
    kept = torch.ones(len(train), dtype=torch.bool)
    kept[held_out] = False
    history = pyro_vae.fit(
        model,
        guide,
        train[kept],
        epochs=args.epochs,
        lr=args.lr,
        warmup_epochs=warmup,
        transform=torch.bernoulli,
        validation=torch.bernoulli(train[held_out], generator=generator),
        patience=args.patience,
        max_minutes=args.minutes,
        seed=args.seed,
        progress=None,
    )
    return model, guide, history


def restored_elbo(history) -> float:
    """The held-out ELBO of the epoch whose parameters :func:`pyro_vae.fit` restored."""
    return -math.inf if history.best_epoch is None else history.val_elbo[history.epoch.index(history.best_epoch)]


def run(kind: str, train: torch.Tensor, test: torch.Tensor, args: argparse.Namespace) -> dict:
    """Train ``kind`` once per warm-up, keep the best on the held-out ELBO, sample and score it."""
    candidates = {warmup: trained(kind, train, warmup, args) for warmup in args.warmup}
    held_out_elbo = {warmup: restored_elbo(history) for warmup, (_, _, history) in candidates.items()}
    warmup = max(held_out_elbo, key=held_out_elbo.get)
    model, guide, history = candidates[warmup]
    model.eval()
    guide.eval()
    with torch.no_grad():
        samples = sample_means(model, kind)
    log_px = pyro_vae.log_likelihood(model, guide, test, num_samples=args.num_samples).mean().item()
    return {
        "samples": samples,
        "log_px": log_px,
        "epochs": len(history.epoch),
        "minutes": history.wall_time / 60,
        "warmup": warmup,
        "held_out_elbo": held_out_elbo,
    }


def sample_means(model, kind: str) -> torch.Tensor:
    """The means of p(x | z) for ``SAMPLES`` ancestral draws of every latent layer."""
    if kind == "single":
        return model.decode(model.prior().sample((SAMPLES,)))
    state = model.lift(model.layers, model.prior().sample((SAMPLES,)))
    for layer in range(model.layers - 1, 0, -1):
        state = model.lift(layer, model.conditional_prior(layer, state).sample(), state)
    return model.likelihood.mean(model.decoder(state))


def tiled(images: torch.Tensor, columns: int = 8) -> np.ndarray:
    """``[N, 1, H, W]`` as one ``[rows * H, columns * W]`` picture with a one-pixel gap."""
    count, _, height, width = images.shape
    rows = -(-count // columns)
    canvas = np.ones((rows * (height + 1) - 1, columns * (width + 1) - 1))
    for index, image in enumerate(images[:, 0].clamp(0, 1).numpy()):
        top, left = (index // columns) * (height + 1), (index % columns) * (width + 1)
        canvas[top : top + height, left : left + width] = image
    return canvas


def figure(results: dict[str, dict[str, dict]], path: Path) -> None:
    plot = Figure(figsize=(8, 3.2 * len(results)), layout="constrained")
    axes = plot.subplots(len(results), len(KINDS), squeeze=False)
    for row, (name, by_kind) in enumerate(results.items()):
        for column, kind in enumerate(KINDS):
            result = by_kind[kind]
            axes[row, column].imshow(tiled(result["samples"]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[row, column].set_title(f"{name}, {kind}: test log p(x) {result['log_px']:.1f}", fontsize=9)
            axes[row, column].axis("off")
    plot.suptitle("Samples x ~ p(x) (means of p(x | z)): one stochastic layer vs a top-down hierarchy")
    plot.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root", default="../shared/data", help="folder holding mnist/, fashion-mnist/, frey-face/"
    )
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help="comma-separated subset of " + ",".join(DATASETS)
    )
    parser.add_argument(
        "--minutes", type=float, default=4.0, help="training budget of each model for each --warmup tried"
    )
    parser.add_argument("--epochs", type=int, default=200, help="at most this many epochs")
    parser.add_argument("--hidden", default="512,256")
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument(
        "--warmup",
        type=lambda text: [float(value) for value in text.split(",")],
        default=[0.0, 5.0],
        help="KL warm-up lengths (epochs) to try; the best held-out ELBO is kept",
    )
    parser.add_argument("--train-rows", type=int, help="train on the first this many images only (smoke tests)")
    parser.add_argument("--num-samples", type=int, default=100, help="importance samples K for the test log p(x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/hierarchical_samples")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    for name in args.datasets.split(","):
        data = load_dataset(name, Path(args.data_root) / DATASETS[name])
        test = torch.bernoulli(data.test_x[:TEST_ROWS], generator=torch.Generator().manual_seed(args.seed))
        train = data.train_x[: args.train_rows]
        results[name] = {kind: run(kind, train, test, args) for kind in KINDS}
        for kind, result in results[name].items():
            print(f"{name} {kind}: test log p(x) {result['log_px']:.2f} after {result['epochs']} epochs")
    figure(results, out / "samples.png")
    lines = [
        f"| data set | model | held-out ELBO by KL warm-up (epochs) | kept | epochs | minutes | "
        f"test log p(x) (K = {args.num_samples}) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, by_kind in results.items():
        for kind, result in by_kind.items():
            tried = ", ".join(f"{warmup:g}: {elbo:.2f}" for warmup, elbo in result["held_out_elbo"].items())
            lines.append(
                f"| {name} | {kind} | {tried} | {result['warmup']:g} | {result['epochs']} | {result['minutes']:.1f} "
                f"| {result['log_px']:.2f} |"
            )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    values = " ".join(
        f"{name.replace('-', '_')}_{kind}_log_px={result['log_px']:.2f} "
        f"{name.replace('-', '_')}_{kind}_warmup={result['warmup']:g}"
        for name, by_kind in results.items()
        for kind, result in by_kind.items()
    )
    print(f"summary: {values} minutes_per_model={args.minutes:g}")


if __name__ == "__main__":
    main()
