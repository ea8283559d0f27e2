"""``pyro-vae latent manifold|interpolate|traverse|scatter``: figures of a run's latent space, the
space of its latent site ``"z"`` (of a hierarchical VAE, its top layer; :attr:`Run.latent_model
<pyro_vae.cli.stock.Run.latent_model>`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pyro_vae import latent, plots
from pyro_vae.cli.queries import data_of_run
from pyro_vae.cli.stock import Run, load_run

SITE = "z"  # every stock unconditional model's latent site (a hierarchical one's top layer)


def _load(args: argparse.Namespace) -> Run:
    run = load_run(args.run, args.device)
    if run.conditional:
        raise ValueError(
            "latent figures are drawn for unconditional runs; for conditional runs use 'sample' and 'style'"
        )
    return run


def _require_images(run: Run, view: str) -> None:
    if len(run.config["x_shape"]) != 3:
        raise ValueError(f"'latent {view}' draws images; this run's data are not images (try 'latent scatter')")


def _out(args: argparse.Namespace, run: Run) -> Path:
    return Path(args.out) if args.out else run.directory / f"latent_{args.view}.png"


def run_view(args: argparse.Namespace) -> int:
    run = _load(args)
    out = _out(args, run)
    with torch.no_grad():
        VIEWS[args.view](run, args, out)
    print(f"wrote {out}")
    return 0


def _manifold(run: Run, args: argparse.Namespace, out: Path) -> None:
    _require_images(run, "manifold")
    if run.config["latent_dim"] != 2:
        raise ValueError(
            f"the manifold grid needs a 2-D latent; this run has {run.config['latent_dim']} (train with --latent-dim 2)"
        )
    images = latent.manifold_grid(run.latent_model, args.points, site=SITE)
    title = (
        f"{run.config['dataset']}: decoded grid of z = Φ⁻¹(u), u on [0.05, 0.95]² (z₁ left to right, z₂ top to bottom)"
    )
    plots.image_grid(images, out, title, columns=args.points)


def _interpolate(run: Run, args: argparse.Namespace, out: Path) -> None:
    _require_images(run, "interpolate")
    x, _, spec = data_of_run(run, args)
    if len(x) < 2 * args.pairs:
        raise ValueError(f"{args.pairs} pairs need {2 * args.pairs} data; {spec} {args.split} has {len(x)}")
    strips = [
        latent.interpolate(run.latent_model, run.guide, x[2 * i], x[2 * i + 1], args.steps, args.method, site=SITE)
        for i in range(args.pairs)
    ]
    rows = [torch.cat([x[2 * i : 2 * i + 1], strip, x[2 * i + 1 : 2 * i + 2]]) for i, strip in enumerate(strips)]
    title = f"{spec} {args.split}: {args.method} interpolation between two data (outer columns) in latent space"
    plots.image_grid(torch.cat(rows), out, title, columns=args.steps + 2)


def _traverse(run: Run, args: argparse.Namespace, out: Path) -> None:
    _require_images(run, "traverse")
    x, _, spec = data_of_run(run, args)
    if not 0 <= args.index < len(x):
        raise ValueError(f"--index {args.index} is outside {spec} {args.split}, which has {len(x)} data")
    values = torch.linspace(-args.range, args.range, args.steps).tolist()
    grid = latent.traverse(run.latent_model, run.guide, x[args.index], values, site=SITE)
    title = f"{spec} {args.split} #{args.index}: latent dimension d (row d) from {-args.range:g} to {args.range:g}"
    plots.image_grid(grid.reshape(-1, *grid.shape[2:]), out, title, columns=args.steps)


def _scatter(run: Run, args: argparse.Namespace, out: Path) -> None:
    x, labels, spec = data_of_run(run, args)
    shown = slice(0, args.num)
    latent.latent_scatter(
        run.guide,
        x[shown],
        None if labels is None else labels[shown],
        out,
        f"{spec} {args.split}: posterior means",
        site=SITE,
    )


VIEWS = {"manifold": _manifold, "interpolate": _interpolate, "traverse": _traverse, "scatter": _scatter}
