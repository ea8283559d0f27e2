"""``pyro-vae train``: fit a stock VAE to a data set and write a complete run directory."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import plots
from pyro_vae.checkpoint import save_checkpoint
from pyro_vae.cli.report import novelty_report, score_name, score_table
from pyro_vae.cli.stock import CHECKPOINT_NAME, build_pair
from pyro_vae.data import DataSplits, load_dataset
from pyro_vae.device import resolve_device
from pyro_vae.preprocessing import Preprocessor
from pyro_vae.training import fit


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def choose_likelihood(requested: str, data: DataSplits) -> str:
    """``auto``: Bernoulli for binary data, continuous Bernoulli for other images in [0, 1],
    Gaussian with learned variance for tables."""
    if requested != "auto":
        return requested
    if _is_binary(data.train_x):
        return "bernoulli"
    return "continuous-bernoulli" if data.is_image else "gaussian-learned"


def choose_preprocessor(likelihood: str, data: DataSplits) -> Preprocessor:
    """Images stay in [0, 1] (binarized at 0.5 for a Bernoulli likelihood); tables are scaled to
    [0, 1] for the Bernoulli families and standardized for the others."""
    binarize = 0.5 if likelihood == "bernoulli" and not _is_binary(data.train_x) else None
    if data.is_image or _is_binary(data.train_x):
        method = "none"
    else:
        method = "minmax" if "bernoulli" in likelihood else "standardize"
    return Preprocessor(method, binarize).fit(data.train_x)


def _likelihood_options(args: argparse.Namespace, likelihood: str) -> dict[str, float]:
    if likelihood == "gaussian":
        return {"scale": args.gaussian_scale}
    if likelihood == "student-t":
        return {"df": args.student_df}
    return {}


def _default_hidden(arch: str, data: DataSplits) -> list[int]:
    if arch == "conv":
        return [32, 64]
    return [256, 128] if data.train_x[0].numel() <= 256 else [512, 256]


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if (out / CHECKPOINT_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a trained run; pass --overwrite to replace it, or choose --out")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out or f"runs/{args.dataset.replace(':', '_').replace('/', '_')}")
    _check_out_dir(out, args.overwrite)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_dir, args.download)
    likelihood = choose_likelihood(args.likelihood, data)
    preprocessor = choose_preprocessor(likelihood, data)
    train_x, test_x = preprocessor.transform(data.train_x), preprocessor.transform(data.test_x)
    config = {
        "dataset": args.dataset,
        "data_dir": None if args.data_dir is None else str(args.data_dir),
        "x_shape": list(data.x_shape),
        "latent_dim": args.latent_dim,
        "hidden": args.hidden or _default_hidden(args.arch, data),
        "arch": args.arch,
        "likelihood": likelihood,
        "likelihood_options": _likelihood_options(args, likelihood),
        "guide": args.guide,
    }
    pyro.set_rng_seed(args.seed)
    model, guide = build_pair(config)
    model.likelihood.check_support(train_x)
    print(
        f"training a {args.arch} VAE ({likelihood} likelihood, {args.latent_dim}-d latent, {args.guide} guide) "
        f"on {len(train_x)} {args.dataset} data of shape {tuple(data.x_shape)}, on {device}"
    )
    history = fit(
        model,
        guide,
        train_x,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        clip_norm=args.clip_norm,
        loss=args.loss,
        num_particles=args.particles,
        vectorize_particles=args.particles > 1,
        beta=args.beta,
        warmup_epochs=args.warmup,
        validation=args.validation,
        patience=args.patience,
        device=str(device),
        seed=args.seed,
        progress=False if args.quiet else None,
    )
    config["training"] = {
        key: getattr(args, key)
        for key in ("epochs", "batch_size", "lr", "clip_norm", "loss", "particles", "beta", "warmup", "seed")
    }
    out.mkdir(parents=True, exist_ok=True)
    written = [save_checkpoint(out / CHECKPOINT_NAME, model, guide, config, preprocessor.state_dict())]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    history.to_csv(out / "history.csv")
    written += [out / "config.json", out / "history.csv"]
    written.append(plots.plot_history(history, out / "elbo.png", f"{args.dataset}: ELBO per datum"))
    model.eval()
    guide.eval()
    test_x = test_x.to(device)
    with torch.no_grad():
        if data.is_image:
            samples = model.decode(model.prior().sample((64,)))
            written.append(
                plots.image_grid(samples, out / "samples.png", f"{args.dataset}: 64 samples (means of p(x|z))")
            )
            shown = test_x[:20]
            reconstructions = model.decode(guide.posterior(shown).mean)
            written.append(
                plots.reconstruction_grid(
                    shown,
                    reconstructions,
                    out / "reconstructions.png",
                    f"{args.dataset}: test data and reconstructions",
                )
            )
    start = time.perf_counter()
    rows = score_table(model, guide, test_x, data.test_y, args.score_samples, False if args.quiet else None)
    metrics = {
        "test_elbo": sum(row["elbo"] for row in rows) / len(rows),
        "test_log_likelihood": sum(row["log_likelihood"] for row in rows) / len(rows),
        "score_samples": args.score_samples,
        "train_seconds": history.wall_time,
        "score_seconds": time.perf_counter() - start,
        "epochs_run": len(history.epoch),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    written.append(out / "metrics.json")
    written += novelty_report(rows, test_x, out, f"{args.dataset} test data", score_name(config))
    print(
        f"test ELBO {metrics['test_elbo']:.3f} nats/datum, importance-sampled {score_name(config)} "
        f"{metrics['test_log_likelihood']:.3f} nats/datum (K={args.score_samples}); "
        f"trained in {history.wall_time:.1f} s"
    )
    print(f"wrote to {out}/:")
    for path in written:
        print(f"  {path.name}")
    return 0
