"""``pyro-vae train-gan``: fit a DCGAN (or its class-conditional version) to an image data set by
the non-saturating game (:func:`pyro_vae.adversarial.fit_gan`) and write a run directory that
``pyro-vae sample`` reads.

A checkpoint (:mod:`pyro_vae.cli.gan_run`) is written after every epoch, so ``--resume DIR``
continues an interrupted run with the options it started with, as ``pyro-vae train --resume`` does.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from pyro_vae import plots
from pyro_vae.adversarial import GANHistory, GANState, fit_gan
from pyro_vae.checkpoint import Checkpoint, save_checkpoint
from pyro_vae.cli.errors import interrupted_status, interruption_name
from pyro_vae.cli.gan_run import build_gan, check_gan_config, load_gan_run
from pyro_vae.cli.inputs import check_splits
from pyro_vae.cli.report import gan_class_grid
from pyro_vae.cli.run_folder import RunLock, check_new_run, check_writable
from pyro_vae.cli.stock import CHECKPOINT_NAME, GAN_MODEL
from pyro_vae.cli.train import check_same_data, fingerprint, resumed, stored_arguments
from pyro_vae.data import DataSplits, load_dataset
from pyro_vae.device import resolve_device
from pyro_vae.gan import Discriminator, Generator


def _config(args: argparse.Namespace, data: DataSplits) -> dict:
    if not data.is_image:
        raise ValueError(
            f"{args.dataset} holds vectors of shape {tuple(data.x_shape)}, and train-gan trains DCGANs on images "
            "(channels, height, width); train a VAE on tables with 'pyro-vae train'"
        )
    if args.conditional and data.train_y is None:
        raise ValueError(f"--conditional needs labels, and {args.dataset} has none")
    return {
        "model": GAN_MODEL,
        "dataset": args.dataset,
        "data_fingerprint": fingerprint(data),
        "data_dir": None if args.data_dir is None else str(args.data_dir),
        "x_shape": list(data.x_shape),
        "latent_dim": args.latent_dim,
        "hidden": args.hidden,
        "discriminator": args.discriminator,
        "discriminator_hidden": args.discriminator_hidden or args.hidden,
        "num_classes": int(data.train_y.max()) + 1 if args.conditional else None,
        "arguments": stored_arguments(args),
    }


def _save(out: Path, generator: Generator, discriminator: Discriminator, config: dict, state: GANState) -> Path:
    return save_checkpoint(out / CHECKPOINT_NAME, generator, discriminator, config, training=state.to_dict())


def _write_history(history: GANHistory, path: Path) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(asdict(history))
        writer.writerows(zip(*asdict(history).values(), strict=True))
    return path


def _start(args: argparse.Namespace) -> tuple[argparse.Namespace, Path, Checkpoint | None]:
    if not args.resume:
        out = Path(args.out or f"runs/{args.dataset.replace(':', '_').replace('/', '_')}-gan")
        check_new_run(out, args.overwrite)
        return args, out, None
    from pyro_vae.cli import train_gan_parser  # the command line imports this module

    args, checkpoint = resumed(args, train_gan_parser(), check_gan_config)
    return args, checkpoint.path.parent, checkpoint


def run(args: argparse.Namespace) -> int:
    """``pyro-vae train-gan``: 0 when the run directory is written, 130 after Ctrl-C and 143 after
    SIGTERM (the last completed epoch saved, the command to continue printed)."""
    args, out, checkpoint = _start(args)
    data = load_dataset(args.dataset, args.data_dir, args.download)
    check_splits(data, args.dataset)
    resume = None
    if checkpoint is None:
        config = _config(args, data)
        torch.manual_seed(args.seed)
        generator, discriminator = build_gan(config)
    else:  # the networks the checkpoint's config describes, its weights checked against them
        check_same_data(args, checkpoint, data)
        stored = load_gan_run(checkpoint, torch.device("cpu"))
        generator, discriminator = stored.generator.train(), stored.discriminator.train()
        config = checkpoint.config | {"data_fingerprint": fingerprint(data)}
        resume = GANState.from_dict(checkpoint.training)
        print(f"resuming {out} after epoch {resume.epoch} of {args.epochs}")
    device = resolve_device(args.device)
    with RunLock(out):
        if resume is None:
            check_new_run(out, args.overwrite)
        check_writable(out, [generator, discriminator])
        kind = "DCGAN" if config["num_classes"] is None else "class-conditional DCGAN"
        print(
            f"training a {kind} ({config['discriminator']} discriminator), {config['latent_dim']}-d latent, on "
            f"{len(data.train_x)} {args.dataset} images of shape {tuple(data.x_shape)}, on {device}"
        )
        saved = [resume]

        def save_epoch(state: GANState) -> None:
            _save(out, generator, discriminator, config, state)
            saved[0] = state

        training_data = data.train_x if config["num_classes"] is None else (data.train_x, data.train_y)
        try:
            history = fit_gan(
                generator, discriminator, training_data, epochs=args.epochs, batch_size=args.batch_size,
                lr=args.lr, label_smoothing=args.label_smoothing, device=str(device), seed=args.seed,
                progress=False if args.quiet else None, on_epoch_end=save_epoch, resume=resume,
            )  # fmt: skip
        except KeyboardInterrupt as interruption:
            kept = f"epoch {saved[0].epoch} is saved" if saved[0] else "no epoch was completed"
            print(
                f"\n{interruption_name(interruption)}: {kept}; continue with: pyro-vae train-gan --resume {out}",
                file=sys.stderr,
            )
            return interrupted_status(interruption)
        _finish(out, generator.eval(), config, history, args)
    return 0


def _finish(out: Path, generator: Generator, config: dict, history: GANHistory, args: argparse.Namespace) -> None:
    """``config.json``, ``history.csv``, ``losses.png``, ``samples.png`` and ``metrics.json``."""
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    written = [out / CHECKPOINT_NAME, out / "config.json", _write_history(history, out / "history.csv")]
    written.append(plots.plot_gan_history(history, out / "losses.png", f"{args.dataset}: GAN training"))
    torch.manual_seed(args.seed)
    if config["num_classes"] is None:
        samples = plots.image_grid(generator.sample(64), out / "samples.png", f"{args.dataset}: 64 samples")
    else:
        title = f"{args.dataset}: a row per class"
        samples = gan_class_grid(generator, config["num_classes"], 10, out / "samples.png", title)
    metrics = {
        "discriminator_loss": history.discriminator_loss[-1],
        "generator_loss": history.generator_loss[-1],
        "train_seconds": sum(history.seconds),
        "epochs_run": len(history.epoch),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    written += [samples, out / "metrics.json"]
    print(", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))
    print(f"wrote to {out}/:")
    for path in written:
        print(f"  {path.name}")
