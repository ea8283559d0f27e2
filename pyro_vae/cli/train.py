"""``pyro-vae train``: fit a stock VAE to a data set and write a complete run directory."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_vae import distributed as parallel
from pyro_vae import plots
from pyro_vae.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pyro_vae.cli.report import (
    class_grid,
    conditional_score_table,
    novelty_report,
    score_name,
    score_table,
    style_transfer,
)
from pyro_vae.cli.stock import CHECKPOINT_NAME, build_pair, checkpoint_path
from pyro_vae.data import DataSplits, hide_labels, load_dataset
from pyro_vae.device import resolve_device
from pyro_vae.preprocessing import Preprocessor
from pyro_vae.resume import TrainingState
from pyro_vae.training import AUTO, History, fit
from pyro_vae.validation import check_data


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


def _config(args: argparse.Namespace, data: DataSplits, likelihood: str) -> dict:
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
    if args.conditional:
        if data.train_y is None:
            raise ValueError(f"--conditional needs labels, and {args.dataset} has none")
        config |= {
            "conditional": True,
            "num_classes": int(data.train_y.max()) + 1,
            "embedding_dim": args.embedding_dim,
            "classifier_arch": args.classifier_arch,
            "labels_per_class": args.labels_per_class,
            "alpha": args.alpha if args.labels_per_class is not None else 0.0,
        }
    elif args.labels_per_class is not None:
        raise ValueError("--labels-per-class trains the semi-supervised conditional VAE; add --conditional")
    return config


def _training_data(args: argparse.Namespace, config: dict, train_x: torch.Tensor, data: DataSplits):
    if not config.get("conditional"):
        return train_x
    if args.labels_per_class is None:
        return train_x, data.train_y
    return train_x, hide_labels(data.train_y, args.labels_per_class, args.seed)


def _describe(args: argparse.Namespace, config: dict, count: int, device: torch.device, processes: int) -> str:
    kind = "conditional VAE" if config.get("conditional") else f"VAE ({args.guide} guide)"
    if config.get("labels_per_class") is not None:
        kind = f"semi-supervised conditional VAE ({args.labels_per_class} labels per class)"
    return (
        f"training a {args.arch} {kind}, {config['likelihood']} likelihood, {args.latent_dim}-d latent, "
        f"on {count} {args.dataset} data of shape {tuple(config['x_shape'])}, on {device}"
        + (f" in {processes} processes" if processes > 1 else "")
    )


def _resumed(args: argparse.Namespace) -> tuple[argparse.Namespace, Checkpoint]:
    """The arguments a run was started with, and its last checkpoint, for ``--resume DIR``."""
    checkpoint = load_checkpoint(checkpoint_path(args.resume))
    if checkpoint.training is None or "arguments" not in checkpoint.config:
        raise ValueError(f"{args.resume} holds no training state to resume from (written by an older pyro-vae?)")
    from pyro_vae.cli import build_parser  # the defaults fill options newer than the checkpoint

    defaults = vars(build_parser().parse_args(["train"]))
    stored = defaults | checkpoint.config["arguments"] | {"quiet": args.quiet, "device": args.device}
    stored["resume"] = args.resume
    return argparse.Namespace(**stored), checkpoint


def _arguments(args: argparse.Namespace) -> dict:
    """The command-line arguments as plain data, stored so that ``--resume`` can repeat them."""
    return {key: value for key, value in vars(args).items() if key not in ("command", "command_name", "resume")}


def _check_launch(args: argparse.Namespace) -> None:
    """Refuse ``--distributed`` outside the processes ``torchrun`` starts, and several such
    processes without it (each would write the whole run)."""
    if args.distributed and not (parallel.launched_by_torchrun() or torch.distributed.is_initialized()):
        command = f"--resume {args.resume}" if args.resume else "... --distributed"
        raise ValueError(
            "--distributed trains in the processes torchrun starts; run: "
            f"torchrun --nproc_per_node=N -m pyro_vae train {command}"
        )
    if not args.distributed and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("started by torchrun with several processes but without --distributed; add --distributed")


def run(args: argparse.Namespace) -> int:
    checkpoint = None
    if args.resume:
        args, checkpoint = _resumed(args)
        out = checkpoint.path.parent
    else:
        out = Path(args.out or f"runs/{args.dataset.replace(':', '_').replace('/', '_')}")
        _check_out_dir(out, args.overwrite)
    _check_launch(args)
    device = resolve_device(args.device)
    if args.distributed:
        device = parallel.initialize(device)
    writer = parallel.is_writer()
    with parallel.rank_zero_first():  # a download happens once
        data = load_dataset(args.dataset, args.data_dir, args.download)
    check_data(data.train_x, f"{args.dataset} training data")
    check_data(data.test_x, f"{args.dataset} test data")
    likelihood = choose_likelihood(args.likelihood, data)
    preprocessor = choose_preprocessor(likelihood, data)
    train_x, test_x = preprocessor.transform(data.train_x), preprocessor.transform(data.test_x)
    config = _config(args, data, likelihood) | {"arguments": _arguments(args)}
    pyro.set_rng_seed(args.seed)
    model, guide = build_pair(config)
    model.likelihood.check_support(train_x)
    resume = None
    if checkpoint is not None:
        checkpoint.load_into(model, guide)
        resume = TrainingState.from_dict(checkpoint.training)
        print(f"resuming {out} after epoch {resume.epoch} of {args.epochs}")
    if writer:
        print(_describe(args, config, len(train_x), device, parallel.world_size()))
    progress = False if args.quiet or not writer else None
    out.mkdir(parents=True, exist_ok=True)
    last_state: list[TrainingState] = [] if resume is None else [resume]

    def save_epoch(state: TrainingState) -> None:
        last_state[:] = [state]
        if not writer:
            return
        save_checkpoint(
            out / CHECKPOINT_NAME, model, guide, config, preprocessor.state_dict(), training=state.to_dict()
        )

    try:
        history = _fit(
            args,
            config,
            model,
            guide,
            _training_data(args, config, train_x, data),
            device,
            progress,
            save_epoch,
            resume,
        )
    except KeyboardInterrupt:
        done = f"epoch {last_state[0].epoch} is saved" if last_state else "no epoch was completed"
        print(f"\ninterrupted: {done}; continue with: pyro-vae train --resume {out}", file=sys.stderr)
        return 130
    parallel.leave()  # the report needs no other process
    if not writer:
        return 0
    try:
        return _finish(
            args, config, model, guide, preprocessor, history, last_state, data, test_x, device, out, progress
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted while writing the report; the trained model is saved in {out}", file=sys.stderr)
        return 130


def _fit(args, config, model, guide, data, device, progress, on_epoch_end, resume) -> History:
    return fit(
        model,
        guide,
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        clip_norm=args.clip_norm,
        loss=args.loss or AUTO,
        num_particles=args.particles,
        vectorize_particles=args.particles > 1,
        beta=args.beta,
        warmup_epochs=args.warmup,
        validation=args.validation,
        patience=args.patience,
        device=str(device),
        seed=args.seed,
        progress=progress,
        on_epoch_end=on_epoch_end,
        resume=resume,
        on_nonfinite=args.on_nonfinite,
        distributed=args.distributed,
    )


def _finish(args, config, model, guide, preprocessor, history, last_state, data, test_x, device, out, progress) -> int:
    """Write the final checkpoint, history, figures and the test report."""
    config["training"] = {
        key: getattr(args, key)
        for key in ("epochs", "batch_size", "lr", "clip_norm", "particles", "beta", "warmup", "seed")
    } | {"loss": args.loss or AUTO}
    training = last_state[0].to_dict() if last_state else None
    written = [
        save_checkpoint(out / CHECKPOINT_NAME, model, guide, config, preprocessor.state_dict(), training=training)
    ]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    history.to_csv(out / "history.csv")
    written += [out / "config.json", out / "history.csv"]
    written.append(plots.plot_history(history, out / "elbo.png", f"{args.dataset}: ELBO per datum"))
    model.eval()
    guide.eval()
    test_x, test_y = test_x.to(device), None if data.test_y is None else data.test_y.to(device)
    report = _conditional_report if config.get("conditional") else _report
    start = time.perf_counter()
    metrics, report_files = report(args, config, model, guide, test_x, test_y, out, progress)
    metrics |= {
        "score_samples": args.score_samples,
        "train_seconds": history.wall_time,
        "score_seconds": time.perf_counter() - start,
        "epochs_run": len(history.epoch),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    written += [*report_files, out / "metrics.json"]
    print(", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))
    print(f"wrote to {out}/:")
    for path in written:
        print(f"  {path.name}")
    return 0


def _report(args, config, model, guide, test_x, test_y, out: Path, progress) -> tuple[dict, list[Path]]:
    """Samples, reconstructions and the novelty report of a plain VAE."""
    written = []
    if test_x.dim() == 4:
        with torch.no_grad():
            samples = model.decode(model.prior().sample((64,)))
            shown = test_x[:20]
            reconstructions = model.decode(guide.posterior(shown).mean)
        written.append(plots.image_grid(samples, out / "samples.png", f"{args.dataset}: 64 samples (means of p(x|z))"))
        written.append(
            plots.reconstruction_grid(
                shown, reconstructions, out / "reconstructions.png", f"{args.dataset}: test data and reconstructions"
            )
        )
    rows = score_table(model, guide, test_x, test_y, args.score_samples, progress)
    written += novelty_report(rows, test_x, out, f"{args.dataset} test data", score_name(config))
    metrics = {
        "test_elbo": sum(row["elbo"] for row in rows) / len(rows),
        "test_log_likelihood": sum(row["log_likelihood"] for row in rows) / len(rows),
    }
    return metrics, written


def _conditional_report(args, config, model, guide, test_x, test_y, out: Path, progress) -> tuple[dict, list[Path]]:
    """Class grid, style transfer, classifier accuracies and the novelty report of a
    conditional VAE; log p(x | y) is estimated with K = --score-samples per class."""
    classes = config["num_classes"]
    written = []
    if test_x.dim() == 4:
        written.append(class_grid(model, classes, 10, out / "samples.png", f"{args.dataset}: a row per class"))
        written.append(
            style_transfer(
                model,
                guide,
                test_x[:8],
                test_y[:8],
                classes,
                out / "style_transfer.png",
                f"{args.dataset}: test data (top) and their z decoded as every class",
            )
        )
    rows, scores = conditional_score_table(model, guide, test_x, test_y, classes, args.score_samples, progress)
    written += novelty_report(rows, test_x, out, f"{args.dataset} test data", "log p(x)")
    metrics = {
        "test_log_likelihood": scores.log_px.mean().item(),
        "generative_classifier_accuracy": (scores.predict() == test_y).float().mean().item(),
    }
    if config.get("labels_per_class") is not None:
        with torch.no_grad():
            classifier = guide.label_posterior(test_x).probs.argmax(-1)
        metrics["classifier_accuracy"] = (classifier == test_y).float().mean().item()
    return metrics, written
