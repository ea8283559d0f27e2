"""``pyro-vae train``: fit a stock VAE to a data set and write a complete run directory."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from pyro_vae import distributed as parallel
from pyro_vae import plots
from pyro_vae.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pyro_vae.cli.errors import interrupted_status, interruption_name
from pyro_vae.cli.inputs import check_splits
from pyro_vae.cli.report import (
    class_grid,
    conditional_score_table,
    novelty_report,
    score_name,
    score_table,
    style_transfer,
)
from pyro_vae.cli.run_folder import RunLock, check_new_run, check_writable, data_fingerprint
from pyro_vae.cli.stock import (
    CHECKPOINT_NAME,
    Guide,
    Model,
    build_pair,
    check_combination,
    check_config,
    checkpoint_path,
)
from pyro_vae.data import DataSplits, hide_labels, load_dataset
from pyro_vae.device import resolve_device
from pyro_vae.preprocessing import Preprocessor
from pyro_vae.resume import TrainingState
from pyro_vae.training import AUTO, History, fit, split_data


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


def fingerprint(data: DataSplits) -> str:
    """The digest of the data as read, before preprocessing (which ``--resume`` takes from the
    checkpoint)."""
    return data_fingerprint(data.train_x, data.train_y, data.test_x, data.test_y)


def _config(args: argparse.Namespace, data: DataSplits, likelihood: str) -> dict:
    config = {
        "dataset": args.dataset,
        "data_fingerprint": fingerprint(data),
        "data_dir": None if args.data_dir is None else str(args.data_dir),
        "x_shape": list(data.x_shape),
        "latent_dim": args.latent_dim,
        "hidden": args.hidden or _default_hidden(args.arch, data),
        "arch": args.arch,
        "likelihood": likelihood,
        "likelihood_options": _likelihood_options(args, likelihood),
        "guide": args.guide,
        "model": args.model,
    }
    if args.model == "hierarchical":
        config["layers"] = args.layers or 2
    elif args.layers is not None:
        raise ValueError("--layers sets the stochastic layers of --model hierarchical; add --model hierarchical")
    if args.prior == "vampprior":
        config["prior"] = "vampprior"
    elif args.pseudo_inputs is not None:
        raise ValueError("--pseudo-inputs sets the VampPrior's pseudo-inputs; add --prior vampprior")
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
    check_combination(config)
    return config


def _training_part(train_x: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """The rows of ``train_x`` that :func:`~pyro_vae.fit` trains on, without those it holds out
    for validation (the same split: the same fraction and seed), to start pseudo-inputs from."""
    kept = split_data(train_x, args.validation, args.seed)[0]
    return kept[0] if isinstance(kept, tuple) else kept


EDITED = "the file was edited or damaged: start a new run"
DEFAULT_PSEUDO_INPUTS = 500
RESUME_OPTIONS = ("resume", "device", "quiet", "accept_changed_data", "command", "command_name")


def resumed(
    args: argparse.Namespace, parser: argparse.ArgumentParser, check: Callable[[dict, Path], None]
) -> tuple[argparse.Namespace, Checkpoint]:
    """The arguments a run was started with, and its last checkpoint, for ``--resume DIR``:
    ``parser`` is the command's own (its defaults fill options newer than the checkpoint),
    ``check`` refuses a configuration the command did not write."""
    checkpoint = load_checkpoint(checkpoint_path(args.resume))
    if checkpoint.training is None or "arguments" not in checkpoint.config:
        raise ValueError(f"{args.resume} holds no training state to resume from (written by an older pyro-vae?)")
    check(checkpoint.config, checkpoint.path)
    check_stored_arguments(parser, checkpoint)
    defaults = vars(parser.parse_args([]))
    changed = [key for key, value in vars(args).items() if key not in RESUME_OPTIONS and value != defaults[key]]
    if changed:
        shown = ", ".join("--" + key.replace("_", "-") for key in changed)
        raise ValueError(
            f"{shown} cannot be given with --resume: the run goes on with the options it started with "
            "(only --device, --quiet and --accept-changed-data may change); start a new run with --out instead"
        )
    live = {"quiet": args.quiet, "device": args.device, "accept_changed_data": args.accept_changed_data}
    stored = defaults | checkpoint.config["arguments"] | live
    stored["resume"] = args.resume
    return argparse.Namespace(**stored), checkpoint


def check_stored_arguments(parser: argparse.ArgumentParser, checkpoint: Checkpoint) -> None:
    """The options stored in the checkpoint pass the checks the command line applies to them."""
    stored = checkpoint.config["arguments"]
    if not isinstance(stored, dict):
        raise ValueError(f"{checkpoint.path} stores its options as {type(stored).__name__}, not a mapping; {EDITED}")
    for action in parser._actions:  # argparse lists its options nowhere else
        value = stored.get(action.dest)
        if value is None:
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        try:
            valid = (action.type is None or action.type(text) is not None) and (
                action.choices is None or value in action.choices
            )
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            valid = False
        if not valid:
            raise ValueError(
                f"{checkpoint.path} stores {action.option_strings[0]} {value!r}, not a valid value; {EDITED}"
            )


def check_same_data(args: argparse.Namespace, checkpoint: Checkpoint, data: DataSplits) -> None:
    """``--resume`` goes on with the data the run started with, unless ``--accept-changed-data``."""
    stored = checkpoint.config.get("data_fingerprint")
    if stored is None or args.accept_changed_data or stored == fingerprint(data):
        return
    raise ValueError(
        f"the data of {args.dataset} changed since {checkpoint.path.parent} started (its fingerprint differs); "
        "pass --accept-changed-data to go on training on the new data, or start a new run with --out"
    )


def stored_arguments(args: argparse.Namespace) -> dict:
    """The command-line arguments as plain data, stored so that ``--resume`` can repeat them."""
    per_call = ("command", "command_name", "resume", "accept_changed_data")
    return {key: value for key, value in vars(args).items() if key not in per_call}


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


def _launch(args: argparse.Namespace) -> torch.device:
    """This process's device; with ``--distributed``, after joining torchrun's process group."""
    _check_launch(args)
    device = resolve_device(args.device)
    return parallel.initialize(device) if args.distributed else device


def _new_out_dir(args: argparse.Namespace) -> Path:
    """``--out`` (default ``runs/<dataset>``), refused if it holds a run's files and ``--overwrite``
    is not given."""
    out = Path(args.out or f"runs/{args.dataset.replace(':', '_').replace('/', '_')}")
    check_new_run(out, args.overwrite)
    return out


def _checked_data(args: argparse.Namespace) -> DataSplits:
    """The data set, downloaded once when several processes start together, its splits checked."""
    with parallel.rank_zero_first():
        data = load_dataset(args.dataset, args.data_dir, args.download)
    check_splits(data, args.dataset)
    return data


@dataclass
class TrainingRun:
    """One ``pyro-vae train``: what it was asked for, its data, model and guide, and where it writes.

    :meth:`start` prepares it from the command line (a new run or ``--resume``), :meth:`train`
    fits it, writing a checkpoint after every epoch, and :meth:`finish` writes the run directory
    (rank 0 only).
    """

    args: argparse.Namespace
    out: Path
    device: torch.device
    writer: bool  # this process writes files (decided while the process group is alive)
    data: DataSplits
    preprocessor: Preprocessor
    train_x: torch.Tensor
    test_x: torch.Tensor
    config: dict
    model: Model
    guide: Guide
    resume: TrainingState | None = None
    last_state: TrainingState | None = None
    history: History | None = None

    @classmethod
    def start(cls, args: argparse.Namespace) -> TrainingRun:
        """Resolve the options, load and preprocess the data, build the seeded model and guide and,
        for ``--resume``, load the checkpoint's parameters and training state."""
        if args.resume:
            from pyro_vae.cli import train_parser  # the command line imports this module

            args, checkpoint = resumed(args, train_parser(), check_config)
        else:
            checkpoint = None
        out = _new_out_dir(args) if checkpoint is None else checkpoint.path.parent
        run = cls._build(args, out, _launch(args), checkpoint)
        if checkpoint is not None:
            run.continue_from(checkpoint)
        return run

    @classmethod
    def _build(
        cls, args: argparse.Namespace, out: Path, device: torch.device, checkpoint: Checkpoint | None
    ) -> TrainingRun:
        """The data, preprocessed, and the model and guide seeded with ``--seed``; resuming
        ``checkpoint``, the data must be those it started with, preprocessed as it stored."""
        data = _checked_data(args)
        likelihood = choose_likelihood(args.likelihood, data)
        if checkpoint is None:
            preprocessor = choose_preprocessor(likelihood, data)
        else:
            check_same_data(args, checkpoint, data)
            preprocessor = Preprocessor.from_state_dict(checkpoint.preprocessing)
        train_x, test_x = preprocessor.transform(data.train_x), preprocessor.transform(data.test_x)
        config = _config(args, data, likelihood) | {"arguments": stored_arguments(args)}
        pool = None
        if config.get("prior") == "vampprior" and checkpoint is not None:  # its count, whatever the data now
            config["pseudo_inputs"] = checkpoint.config["pseudo_inputs"]
        elif config.get("prior") == "vampprior":
            pool = _training_part(train_x, args)
            config["pseudo_inputs"] = min(args.pseudo_inputs or DEFAULT_PSEUDO_INPUTS, len(pool))
        pyro.set_rng_seed(args.seed)
        model, guide = build_pair(config, pool)
        model.likelihood.check_support(train_x)
        return cls(
            args=args,
            out=out,
            device=device,
            writer=parallel.is_writer(),
            data=data,
            preprocessor=preprocessor,
            train_x=train_x,
            test_x=test_x,
            config=config,
            model=model,
            guide=guide,
        )

    def continue_from(self, checkpoint: Checkpoint) -> None:
        """Take the parameters and the training state of an interrupted run's last epoch."""
        checkpoint.load_into(self.model, self.guide)
        self.resume = self.last_state = TrainingState.from_dict(checkpoint.training)
        print(f"resuming {self.out} after epoch {self.resume.epoch} of {self.args.epochs}")

    @property
    def loss(self) -> str:
        """The estimator asked for; ``auto`` lets :func:`~pyro_vae.fit` choose (``enum`` for a guide
        that enumerates, as the semi-supervised one does)."""
        return self.args.loss or AUTO

    @property
    def progress(self) -> bool | None:
        """A progress bar on a terminal, in the writing process, unless ``--quiet``."""
        return False if self.args.quiet or not self.writer else None

    def describe(self) -> str:
        """One line: what is trained, on what, where."""
        args, config, processes = self.args, self.config, parallel.world_size()
        kind = "conditional VAE" if config.get("conditional") else f"VAE ({args.guide} guide)"
        if config["model"] == "hierarchical":
            kind = f"{config['layers']}-layer hierarchical VAE (top-down guide)"
        if config.get("prior") == "vampprior":
            kind += f" with the VampPrior ({config['pseudo_inputs']} pseudo-inputs)"
        if config.get("labels_per_class") is not None:
            kind = f"semi-supervised conditional VAE ({args.labels_per_class} labels per class)"
        return (
            f"training a {args.arch} {kind}, {config['likelihood']} likelihood, {args.latent_dim}-d latent, "
            f"on {len(self.train_x)} {args.dataset} data of shape {tuple(config['x_shape'])}, on {self.device}"
            + (f" in {processes} processes" if processes > 1 else "")
        )

    def training_data(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x``; with ``--conditional`` the pair ``(x, y)``, ``y`` with the hidden labels of
        ``--labels-per-class`` marked missing."""
        if not self.config.get("conditional"):
            return self.train_x
        labels = self.data.train_y
        if self.args.labels_per_class is not None:
            labels = hide_labels(labels, self.args.labels_per_class, self.args.seed)
        return self.train_x, labels

    def save_checkpoint(self, training: dict | None) -> Path:
        """The model, guide, configuration and preprocessing, with ``training`` (a training state)."""
        return save_checkpoint(
            self.out / CHECKPOINT_NAME,
            self.model,
            self.guide,
            self.config,
            self.preprocessor.state_dict(),
            training=training,
        )

    def save_epoch(self, state: TrainingState) -> None:
        """After every epoch: keep its state, and (rank 0) checkpoint it for ``--resume``."""
        self.last_state = state
        if self.writer:
            self.save_checkpoint(state.to_dict())

    def check_out(self) -> None:
        """In the locked folder, before any training: still no other run's files there (another
        process may have finished one meanwhile), writable, with room for the checkpoints."""
        if self.resume is None:
            check_new_run(self.out, self.args.overwrite)
        check_writable(self.out, [self.model, self.guide])

    def train(self) -> History:
        """Fit the model and guide by SVI with the command line's options."""
        args = self.args
        self.history = fit(
            self.model,
            self.guide,
            self.training_data(),
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            clip_norm=args.clip_norm,
            loss=self.loss,
            num_particles=args.particles,
            vectorize_particles=args.particles > 1 and not args.free_bits,  # free bits floor each particle
            beta=args.beta,
            warmup_epochs=args.warmup,
            free_bits=args.free_bits,
            validation=args.validation,
            patience=args.patience,
            device=str(self.device),
            seed=args.seed,
            progress=self.progress,
            on_epoch_end=self.save_epoch,
            resume=self.resume,
            on_nonfinite=args.on_nonfinite,
            distributed=args.distributed,
            capture=args.capture,
        )
        return self.history

    def saved_so_far(self) -> str:
        """What an interruption of training leaves."""
        return f"epoch {self.last_state.epoch} is saved" if self.last_state else "no epoch was completed"

    def finish(self) -> list[Path]:
        """Write the final checkpoint, history, figures and the test report; print the test
        metrics and the files written."""
        written = self._write_training()
        metrics, report_files = self._evaluate()
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        written += [*report_files, self.out / "metrics.json"]
        print(", ".join(f"{key} {value:.4g}" for key, value in metrics.items()))
        print(f"wrote to {self.out}/:")
        for path in written:
            print(f"  {path.name}")
        return written

    def _write_training(self) -> list[Path]:
        """The checkpoint with the training options, ``config.json``, ``history.csv`` and ``elbo.png``."""
        args, out = self.args, self.out
        options = ("epochs", "batch_size", "lr", "clip_norm", "particles", "beta", "warmup", "free_bits", "seed")
        self.config["training"] = {key: getattr(args, key) for key in options} | {"loss": self.loss}
        written = [self.save_checkpoint(None if self.last_state is None else self.last_state.to_dict())]
        (out / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        self.history.to_csv(out / "history.csv")
        written += [out / "config.json", out / "history.csv"]
        title = f"{args.dataset}: training history"
        written.append(plots.plot_history(self.history, out / "elbo.png", title))
        return written

    def _evaluate(self) -> tuple[dict, list[Path]]:
        """The test report and its metrics, with the time it took and the time training took."""
        self.model.eval()
        self.guide.eval()
        test_x = self.test_x.to(self.device)
        test_y = None if self.data.test_y is None else self.data.test_y.to(self.device)
        report = self._conditional_report if self.config.get("conditional") else self._report
        start = time.perf_counter()
        metrics, written = report(test_x, test_y)
        metrics |= {
            "score_samples": self.args.score_samples,
            "train_seconds": self.history.wall_time,
            "score_seconds": time.perf_counter() - start,
            "epochs_run": len(self.history.epoch),
        }
        return metrics, written

    def _report(self, test_x: torch.Tensor, test_y: torch.Tensor | None) -> tuple[dict, list[Path]]:
        """Samples, reconstructions and the novelty report of a plain VAE."""
        written = self._image_figures(test_x) if test_x.dim() == 4 else []
        rows = score_table(self.model, self.guide, test_x, test_y, self.args.score_samples, self.progress)
        name = f"{self.args.dataset} test data"
        written += novelty_report(rows, test_x, self.out, name, score_name(self.config))
        metrics = {
            "test_elbo": sum(row["elbo"] for row in rows) / len(rows),
            "test_log_likelihood": sum(row["log_likelihood"] for row in rows) / len(rows),
        }
        return metrics, written

    def _image_figures(self, test_x: torch.Tensor) -> list[Path]:
        """64 samples, and 20 test images beside their reconstructions."""
        dataset, out = self.args.dataset, self.out
        with torch.no_grad():
            samples = self.model.decode(self.model.prior().sample((64,)))
            shown = test_x[:20]
            reconstructions = self.model.decode(self.guide.posterior(shown).mean)
        title = f"{dataset}: test data and reconstructions"
        return [
            plots.image_grid(samples, out / "samples.png", f"{dataset}: 64 samples (means of p(x|z))"),
            plots.reconstruction_grid(shown, reconstructions, out / "reconstructions.png", title),
        ]

    def _conditional_report(self, test_x: torch.Tensor, test_y: torch.Tensor) -> tuple[dict, list[Path]]:
        """Class grid, style transfer, classifier accuracies and the novelty report of a
        conditional VAE; log p(x | y) is estimated with K = --score-samples per class."""
        model, guide, classes = self.model, self.guide, self.config["num_classes"]
        written = self._class_figures(test_x, test_y) if test_x.dim() == 4 else []
        rows, scores = conditional_score_table(
            model, guide, test_x, test_y, classes, self.args.score_samples, self.progress
        )
        written += novelty_report(rows, test_x, self.out, f"{self.args.dataset} test data", "log p(x)")
        metrics = {
            "test_log_likelihood": scores.log_px.mean().item(),
            "generative_classifier_accuracy": (scores.predict() == test_y).float().mean().item(),
        }
        if self.config.get("labels_per_class") is not None:
            with torch.no_grad():
                classifier = guide.label_posterior(test_x).probs.argmax(-1)
            metrics["classifier_accuracy"] = (classifier == test_y).float().mean().item()
        return metrics, written

    def _class_figures(self, test_x: torch.Tensor, test_y: torch.Tensor) -> list[Path]:
        """A row of samples per class, and 8 test images' styles decoded as every class."""
        dataset, out, classes = self.args.dataset, self.out, self.config["num_classes"]
        return [
            class_grid(self.model, classes, 10, out / "samples.png", f"{dataset}: a row per class"),
            style_transfer(
                self.model,
                self.guide,
                test_x[:8],
                test_y[:8],
                classes,
                out / "style_transfer.png",
                f"{dataset}: test data (top) and their z decoded as every class",
            ),
        ]


def run(args: argparse.Namespace) -> int:
    """``pyro-vae train``: 0 when the run directory is written, 130 after Ctrl-C, 143 after
    SIGTERM (the last completed epoch saved, the command to continue printed)."""
    training = TrainingRun.start(args)
    with RunLock(training.out) if training.writer else nullcontext():
        if training.writer:
            training.check_out()
            print(training.describe())
        return _train_and_finish(training)


def _train_and_finish(training: TrainingRun) -> int:
    try:
        training.train()
    except KeyboardInterrupt as interruption:
        print(
            f"\n{interruption_name(interruption)}: {training.saved_so_far()}; continue with: "
            f"pyro-vae train --resume {training.out}",
            file=sys.stderr,
        )
        return interrupted_status(interruption)
    parallel.leave()  # the report needs no other process
    if not training.writer:
        return 0
    try:
        training.finish()
    except KeyboardInterrupt as interruption:
        print(
            f"\n{interruption_name(interruption)} while writing the report; the trained model is saved in "
            f"{training.out}",
            file=sys.stderr,
        )
        return interrupted_status(interruption)
    return 0
