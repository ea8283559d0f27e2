"""Commands on a trained run: ``evaluate``, ``score``, ``sample`` and ``reconstruct``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from pyro_vae import plots
from pyro_vae.cli.report import novelty_report, score_name, score_table
from pyro_vae.cli.stock import Run, load_run
from pyro_vae.data import load_dataset


def _data(run: Run, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """The requested split of ``--data`` (default: the run's own data set), preprocessed as in training."""
    spec = args.data or run.config["dataset"]
    data_dir = args.data_dir if args.data else (args.data_dir or run.config.get("data_dir"))
    data = load_dataset(spec, data_dir)
    parts = {"train": [(data.train_x, data.train_y)], "test": [(data.test_x, data.test_y)]}
    parts["all"] = parts["train"] + parts["test"]
    xs, ys = zip(*parts[args.split], strict=True)
    x = torch.cat(xs)
    y = None if any(part is None for part in ys) else torch.cat(ys)
    x = run.preprocessor.transform(x).to(run.device)
    run.model.likelihood.check_support(x)
    return x, y, spec


def evaluate(args: argparse.Namespace) -> int:
    run = load_run(args.run, args.device)
    x, labels, spec = _data(run, args)
    rows = score_table(run.model, run.guide, x, labels, args.num_samples)
    results = {"data": spec, "split": args.split, "count": len(rows), "num_samples": args.num_samples}
    for key in ("elbo", "log_likelihood"):
        values = torch.tensor([row[key] for row in rows], dtype=torch.float64)
        results[key] = values.mean().item()
        results[f"{key}_stderr"] = (values.std().item() / math.sqrt(len(values))) if len(values) > 1 else 0.0
    print(f"{spec} {args.split} ({len(rows)} data), nats per datum:")
    for label, key in (("ELBO", "elbo"), (f"{score_name(run.config)}, K={args.num_samples}", "log_likelihood")):
        print(f"  {label:<20s} {results[key]:10.3f} ± {results[key + '_stderr']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def score(args: argparse.Namespace) -> int:
    run = load_run(args.run, args.device)
    x, labels, spec = _data(run, args)
    rows = score_table(run.model, run.guide, x, labels, args.num_samples)
    out = Path(args.out) if args.out else run.directory
    out.mkdir(parents=True, exist_ok=True)
    score = score_name(run.config)
    written = novelty_report(rows, x, out, f"{spec} {args.split}", score, stem=args.stem)
    print(f"most novel of {len(rows)} {spec} {args.split} data (lowest {score}, nats):")
    for row in rows[:5]:
        print(f"  #{row['index']:<6d} label {row['label']!s:>3}  {score} {row['log_likelihood']:10.3f}")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def sample(args: argparse.Namespace) -> int:
    run = load_run(args.run, args.device)
    if len(run.config["x_shape"]) != 3:
        raise ValueError("sample draws image grids; this run's data are not images")
    torch.manual_seed(args.seed)
    with torch.no_grad():
        z = run.model.prior().sample((args.num,))
        images = run.model.decode(z)
    out = Path(args.out) if args.out else run.directory / "samples.png"
    plots.image_grid(images, out, f"{run.config['dataset']}: {args.num} samples (means of p(x|z))")
    print(f"wrote {out}")
    return 0


def reconstruct(args: argparse.Namespace) -> int:
    run = load_run(args.run, args.device)
    x, _, spec = _data(run, args)
    if x.dim() != 4:
        raise ValueError("reconstruct draws images; these data are not images")
    shown = x[: args.num]
    with torch.no_grad():
        reconstructions = run.model.decode(run.guide.posterior(shown).mean)
    out = Path(args.out) if args.out else run.directory / "reconstructions.png"
    plots.reconstruction_grid(shown, reconstructions, out, f"{spec} {args.split}: data and reconstructions")
    print(f"wrote {out}")
    return 0
