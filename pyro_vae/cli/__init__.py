"""The ``pyro-vae`` command line: ``train``, ``train-gan``, ``evaluate``, ``sample``, ``reconstruct``,
``style``, ``score``, ``fit-detector`` and ``latent``.

Every command prints what it wrote. Errors in the input (missing files, wrong data, a checkpoint
of another model) end the command with a message of one or two lines and exit status 2; a
numerical fault in training (a non-finite loss or parameter, divergence) with exit status 3, the
last epoch's checkpoint intact; Ctrl-C with status 130 and SIGTERM with 143, likewise
(:mod:`pyro_vae.cli.errors`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pyro_vae.cli import latent, novelty, queries, train, train_gan
from pyro_vae.cli.errors import run_command
from pyro_vae.cli.options import (
    CONTAMINATION,
    FRACTION,
    NONNEGATIVE,
    NONNEGATIVE_INTEGER,
    POSITIVE,
    POSITIVE_INTEGER,
    SEED,
    Bounded,
)
from pyro_vae.cli.run_folder import check_output
from pyro_vae.cli.stock import MODELS, PRIORS
from pyro_vae.gan import DISCRIMINATOR_ARCHS
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.nets import ARCHITECTURES
from pyro_vae.novelty import NoveltyDetector
from pyro_vae.training import AUTO, LOSSES

DETECTOR_DEFAULTS = NoveltyDetector().get_params()
LAYERS = Bounded(2, integer=True)

DATASETS_HELP = "digits (bundled 8x8), mnist, fashion-mnist, frey, omniglot, npz:PATH, csv:PATH or images:DIR"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, but not the uninformative ``None`` and ``False`` ones, and the range of
    every numeric option."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help if action.default in (None, False) else super()._get_help_string(action)
        return f"{text} [{action.type.text}]" if isinstance(action.type, Bounded) else text


class _Parser(argparse.ArgumentParser):
    """Reports a usage error in two lines, the problem and where the help is (exit status 2),
    instead of the whole usage text."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _add_run_folder_options(parser: argparse.ArgumentParser, default_out: str, kind: str) -> None:
    """--out, --overwrite, --resume and --accept-changed-data of a command that writes a run."""
    parser.add_argument("--out", help=f"run directory (default: {default_out})")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files of a run already in --out (other files stay)"
    )
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help=f"continue the interrupted {kind} in DIR from its last completed epoch, with the options it was "
        "started with (a checkpoint is written after every epoch); --device and --quiet may change",
    )
    parser.add_argument(
        "--accept-changed-data",
        action="store_true",
        help="with --resume: go on although the data differ from those the run started with",
    )


def _add_train(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "train",
        help="train a VAE and write a run directory",
        description="Train a stock VAE by SVI and write checkpoint.pt, config.json, history.csv, metrics.json, "
        "elbo.png, samples.png and reconstructions.png (images), and a novelty report of the test data "
        "(novelty.csv, most novel first; novelty_histogram.png; novelty_top10.png for images).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--dataset", default="digits", help=DATASETS_HELP)
    parser.add_argument("--data-dir", help="folder of the data files (default: data/<dataset>)")
    parser.add_argument("--download", action="store_true", help="let torchvision download MNIST/Fashion-MNIST")
    parser.add_argument(
        "--likelihood",
        default="auto",
        choices=["auto", *LIKELIHOODS],
        help="p(x|z); auto: bernoulli for binary data, continuous-bernoulli for images, gaussian-learned for tables",
    )
    parser.add_argument(
        "--gaussian-scale",
        type=POSITIVE,
        default=0.1,
        help="standard deviation σ of --likelihood gaussian, N(f(z), cI) with c = σ²",
    )
    parser.add_argument("--student-df", type=POSITIVE, default=4.0, help="degrees of freedom of --likelihood student-t")
    parser.add_argument("--arch", default="mlp", choices=ARCHITECTURES, help="encoder/decoder networks")
    parser.add_argument(
        "--model",
        default="vae",
        choices=MODELS,
        help="vae: one latent layer; hierarchical: --layers stochastic layers with top-down inference (ladder VAE, "
        "NVAE), each of --latent-dim dimensions",
    )
    parser.add_argument(
        "--layers", type=LAYERS, help="with --model hierarchical: the number of stochastic layers (default 2)"
    )
    parser.add_argument(
        "--prior",
        default="normal",
        choices=PRIORS,
        help="p(z) (of the top layer): N(0, I), or the VampPrior (Tomczak & Welling 2018), the guide's posterior "
        "averaged over --pseudo-inputs learned pseudo-inputs started at random training data",
    )
    parser.add_argument(
        "--pseudo-inputs", type=POSITIVE_INTEGER, help="pseudo-inputs of --prior vampprior (default 500)"
    )
    parser.add_argument("--guide", default="normal", choices=["normal", "delta"], help="delta: plain autoencoder")
    parser.add_argument("--latent-dim", type=POSITIVE_INTEGER, default=10, help="dimension of z")
    parser.add_argument(
        "--hidden",
        type=_int_list,
        help="encoder layer widths (mlp) or channels (conv), e.g. 512,256; the decoder mirrors them "
        "(default: 256,128 for small inputs, 512,256 otherwise; 32,64 for conv)",
    )
    parser.add_argument("--epochs", type=POSITIVE_INTEGER, default=50, help="passes over the training data")
    parser.add_argument("--batch-size", type=POSITIVE_INTEGER, default=128, help="minibatch size")
    parser.add_argument("--lr", type=POSITIVE, default=1e-3, help="Adam learning rate")
    parser.add_argument("--clip-norm", type=POSITIVE, help="clip each parameter's gradient norm")
    parser.add_argument(
        "--loss",
        choices=[AUTO, *sorted(LOSSES)],
        help="ELBO implementation (default: auto, chosen by fit: TraceEnum_ELBO for a guide that enumerates, "
        "as with missing labels, a lean Trace_ELBO for reparameterizable guides, Pyro's Trace_ELBO otherwise)",
    )
    parser.add_argument("--particles", type=POSITIVE_INTEGER, default=1, help="ELBO particles per step (vectorized)")
    parser.add_argument("--beta", type=NONNEGATIVE, default=1.0, help="KL weight")
    parser.add_argument("--warmup", type=NONNEGATIVE, default=0.0, help="epochs of linear KL warm-up from 0 to --beta")
    parser.add_argument(
        "--free-bits",
        type=NONNEGATIVE,
        default=0.0,
        help="floor every latent site's KL term at this many nats per datum (0: none), e.g. against the collapse of a "
        "hierarchical VAE's lower layers (trains with Pyro's SVI and FreeBitsELBO)",
    )
    parser.add_argument("--validation", type=FRACTION, default=0.1, help="fraction of the training data held out")
    parser.add_argument(
        "--patience", type=POSITIVE_INTEGER, help="early stopping: epochs without validation improvement"
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="record the training step once per minibatch shape and replay it: the same losses and parameters, "
        "less Python per step (with the default --loss auto; otherwise a warning says why it runs eagerly)",
    )
    parser.add_argument(
        "--on-nonfinite",
        default="raise",
        choices=["raise", "rollback"],
        help="a NaN/inf loss or parameter stops training (raise; the last epoch's checkpoint stays), or rolls back "
        "to the last epoch with half the learning rate (up to 3 times)",
    )
    parser.add_argument(
        "--conditional", action="store_true", help="conditional VAE p(x|z,y) with the data set's labels"
    )
    parser.add_argument(
        "--labels-per-class",
        type=POSITIVE_INTEGER,
        help="with --conditional: keep this many labels per class and train M2 semi-supervised on the rest",
    )
    parser.add_argument("--alpha", type=NONNEGATIVE, default=50.0, help="weight of M2's auxiliary classification term")
    parser.add_argument(
        "--embedding-dim", type=POSITIVE_INTEGER, help="with --conditional: learned label embedding (default one-hot)"
    )
    parser.add_argument(
        "--classifier-arch",
        choices=ARCHITECTURES,
        help="with --conditional: network of q(y|x) (default: --arch); conv generalizes better from few labels",
    )
    parser.add_argument(
        "--score-samples", type=POSITIVE_INTEGER, default=1000, help="K for the test log p(x) and novelty report"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=SEED, default=0, help="seeds the initial weights, minibatches and sampling")
    _add_run_folder_options(parser, "runs/<dataset>", "run")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel training in the processes of torchrun --nproc_per_node=N -m pyro_vae train ...; "
        "rank 0 writes the run",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(command=train.run)
    return parser


def train_parser() -> argparse.ArgumentParser:
    """The parser of ``pyro-vae train`` alone: its defaults and value checks, for ``--resume``."""
    return _add_train(_Parser(prog="pyro-vae").add_subparsers())


def _add_train_gan(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "train-gan",
        help="train a DCGAN on images and write a run directory",
        description="Train a DCGAN (Radford et al. 2016) by the non-saturating game, with a DCGAN or PatchGAN "
        "discriminator, optionally class-conditional, and write checkpoint.pt (after every epoch; --resume "
        "continues), config.json, history.csv, losses.png, samples.png and metrics.json. 'pyro-vae sample' reads "
        "the run.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--dataset", default="digits", help=DATASETS_HELP + " (images)")
    parser.add_argument("--data-dir", help="folder of the data files (default: data/<dataset>)")
    parser.add_argument("--download", action="store_true", help="let torchvision download MNIST/Fashion-MNIST")
    parser.add_argument(
        "--discriminator",
        default="dcgan",
        choices=DISCRIMINATOR_ARCHS[:2],
        help="dcgan: one logit per image; patch: PatchGAN's, one logit per patch (Isola et al. 2017)",
    )
    parser.add_argument("--conditional", action="store_true", help="class-conditional GAN with the data set's labels")
    parser.add_argument("--latent-dim", type=POSITIVE_INTEGER, default=32, help="dimension of z")
    parser.add_argument(
        "--hidden", type=_int_list, default=[32, 64], help="the generator's channels, from the image inwards"
    )
    parser.add_argument(
        "--discriminator-hidden", type=_int_list, help="the discriminator's channels (default: --hidden)"
    )
    parser.add_argument("--epochs", type=POSITIVE_INTEGER, default=20, help="passes over the training data")
    parser.add_argument("--batch-size", type=POSITIVE_INTEGER, default=64, help="minibatch size")
    parser.add_argument("--lr", type=POSITIVE, default=2e-4, help="Adam learning rate of both players (β₁ = 0.5)")
    parser.add_argument(
        "--label-smoothing",
        type=FRACTION,
        default=0.1,
        help="one-sided: the discriminator's target for data is 1 minus this",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=SEED, default=0, help="seeds the initial weights, minibatches and draws")
    _add_run_folder_options(parser, "runs/<dataset>-gan", "GAN run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(command=train_gan.run)
    return parser


def train_gan_parser() -> argparse.ArgumentParser:
    """The parser of ``pyro-vae train-gan`` alone: its defaults and value checks, for ``--resume``."""
    return _add_train_gan(_Parser(prog="pyro-vae").add_subparsers())


RUN_HELP = "run directory written by 'pyro-vae train', or its checkpoint.pt"


def _add_run_command(
    commands: argparse._SubParsersAction, name: str, help_text: str, handler, run_help: str = RUN_HELP
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
    parser.add_argument("run", help=run_help)
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    parser.set_defaults(command=handler)
    return parser


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help=f"data to use: {DATASETS_HELP} (default: the run's data set)")
    parser.add_argument("--data-dir", help="folder of the data files")
    parser.add_argument(
        "--split",
        choices=["train", "test", "all"],
        help="part of the data (default: all of a file given with --data, in the file's order; else the test split)",
    )


def _add_latent(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "latent",
        help="figures of the latent space: manifold, interpolate, traverse, scatter",
        description="Figures of a run's latent space, written as RUN/latent_<view>.png (or --out).",
        formatter_class=_HelpFormatter,
    )
    views = parser.add_subparsers(dest="view", required=True)
    help_texts = {
        "manifold": "2-D latents: decode a grid of z = Φ⁻¹(u) over the unit square (Kingma & Welling, Fig. 4)",
        "interpolate": "decode the latent path between pairs of data",
        "traverse": "vary one latent dimension at a time around one datum",
        "scatter": "posterior means coloured by label (PCA beyond 2-D)",
    }
    for view, help_text in help_texts.items():
        sub = _add_run_command(views, view, help_text, latent.run_view)
        sub.add_argument("--out", help="PNG path (default: RUN/latent_<view>.png)")
        if view != "manifold":
            _add_data_arguments(sub)
    views.choices["manifold"].add_argument("--points", type=POSITIVE_INTEGER, default=20, help="grid points per side")
    views.choices["interpolate"].add_argument(
        "--pairs", type=POSITIVE_INTEGER, default=4, help="pairs of data, one row each"
    )
    views.choices["interpolate"].add_argument(
        "--steps", type=POSITIVE_INTEGER, default=10, help="decoded points per path"
    )
    views.choices["interpolate"].add_argument("--method", default="linear", choices=["linear", "spherical"])
    views.choices["traverse"].add_argument(
        "--index", type=NONNEGATIVE_INTEGER, default=0, help="which datum to start from"
    )
    views.choices["traverse"].add_argument("--steps", type=POSITIVE_INTEGER, default=9, help="values per dimension")
    views.choices["traverse"].add_argument("--range", type=POSITIVE, default=3.0, help="values from -RANGE to RANGE")
    views.choices["scatter"].add_argument("--num", type=POSITIVE_INTEGER, default=2000, help="data shown")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyro-vae", description="Variational autoencoders as Pyro programs: train, evaluate, sample, score."
    )
    commands = parser.add_subparsers(dest="command_name", required=True)
    _add_train(commands)
    _add_train_gan(commands)

    evaluate = _add_run_command(
        commands, "evaluate", "ELBO and importance-sampled log p(x) per datum, in nats", queries.evaluate
    )
    _add_data_arguments(evaluate)
    evaluate.add_argument(
        "--num-samples",
        type=POSITIVE_INTEGER,
        help="importance samples K per datum (default 1000; with --tolerance, the first round's: default 100)",
    )
    evaluate.add_argument(
        "--tolerance",
        type=POSITIVE,
        help="adapt K per datum: double it until the standard error of log p(x) is at most this many nats",
    )
    evaluate.add_argument(
        "--max-samples", type=POSITIVE_INTEGER, help="with --tolerance, the most samples per datum (default 5000)"
    )
    evaluate.add_argument("--json", help="also write the results to this JSON file")

    sample = _add_run_command(
        commands,
        "sample",
        "draw samples from the model (or a GAN's generator) as a PNG grid",
        queries.sample,
        run_help="run directory written by 'pyro-vae train' or 'pyro-vae train-gan', or its checkpoint.pt",
    )
    sample.add_argument("--num", type=POSITIVE_INTEGER, default=64, help="number of samples")
    sample.add_argument(
        "--class",
        dest="label",
        type=NONNEGATIVE_INTEGER,
        help="draw samples of this class (conditional runs; without it they show a row per class)",
    )
    sample.add_argument("--seed", type=SEED, default=0, help="seeds the latent draws")
    sample.add_argument("--out", help="PNG path (default: RUN/samples.png)")

    reconstruct = _add_run_command(
        commands, "reconstruct", "data beside their reconstructions, as PNG", queries.reconstruct
    )
    _add_data_arguments(reconstruct)
    reconstruct.add_argument("--num", type=POSITIVE_INTEGER, default=20, help="number of data shown")
    reconstruct.add_argument("--out", help="PNG path (default: RUN/reconstructions.png)")

    style = _add_run_command(
        commands,
        "style",
        "style transfer (conditional runs): encode data with their labels, decode each z as every class",
        queries.style,
    )
    _add_data_arguments(style)
    style.add_argument("--num", type=POSITIVE_INTEGER, default=8, help="number of data shown")
    style.add_argument("--out", help="PNG path (default: RUN/style_transfer.png)")

    score = _add_run_command(
        commands,
        "score",
        "score data by log p(x) with a detector or a run: CSV most novel first, histograms, ROC",
        novelty.score,
        run_help=f"detector directory written by 'pyro-vae fit-detector' (or its detector.pt), or a {RUN_HELP}",
    )
    score.add_argument(
        "--data",
        help=f"data to score: FILE.csv, FILE.npz, a folder of images, or {DATASETS_HELP} (default: the run's "
        "data set; required for a detector). A 'label' column, 'y' array or folders 0/ and 1/ of 0/1 labels "
        "(1 = novel) add a ROC curve",
    )
    score.add_argument("--data-dir", help="folder of the data files")
    score.add_argument(
        "--split",
        choices=["train", "test", "all"],
        help="part of the data (default: all of a file given with --data, else the test split)",
    )
    score.add_argument(
        "--num-samples", type=POSITIVE_INTEGER, default=1000, help="importance samples K per datum (runs)"
    )
    score.add_argument(
        "--contamination", type=CONTAMINATION, default=0.01, help="runs: fraction of training data above the threshold"
    )
    score.add_argument(
        "--reference-size",
        type=POSITIVE_INTEGER,
        default=1000,
        help="runs: training data scored as the reference; for the typicality test, the held-out images it is "
        "fitted to (at most)",
    )
    score.add_argument(
        "--correction",
        default="auto",
        choices=["auto", "none", "typicality", "complexity", "regret"],
        help="runs: what ranks the data. typicality: the typicality test of log p(x), rate, PNG length and tail "
        "against the run's held-out images (pyro_vae.typicality); none: log p(x); complexity: log p(x) + PNG length "
        "(Serrà et al. 2020); regret: minus the likelihood regret (Xiao et al. 2020). auto: typicality for images, "
        "none otherwise",
    )
    score.add_argument("--netcdf", action="store_true", help="also write STEM.nc, an ArviZ InferenceData file")
    score.add_argument("--out", help="folder for the report (default: the run or detector directory)")
    score.add_argument("--stem", default="scores", help="file name stem: STEM.csv, STEM_histogram.png, ...")

    _add_latent(commands)

    detector = commands.add_parser(
        "fit-detector",
        help="fit a NoveltyDetector to a table and write DIR/detector.pt",
        description="Fit a NoveltyDetector (VAEs with per-column likelihoods, scored by their mean importance-sampled "
        "log p(x)) to a CSV or NPZ table and write OUT/detector.pt; score new data with 'pyro-vae score OUT'.",
        formatter_class=_HelpFormatter,
    )
    detector.add_argument("data", help="FILE.csv (a 'label'/'y' column is ignored) or FILE.npz (array X or x)")
    detector.add_argument("--out", required=True, help="folder for detector.pt")
    detector.add_argument("--split", default="all", choices=["train", "test", "all"], help="rows to fit on")
    detector.add_argument("--contamination", type=CONTAMINATION, default=0.1, help="expected fraction of outliers")
    detector.add_argument(
        "--members",
        type=POSITIVE_INTEGER,
        default=DETECTOR_DEFAULTS["members"],
        help="VAEs (seeds) whose log p(x) is averaged",
    )
    detector.add_argument(
        "--steps",
        type=POSITIVE_INTEGER,
        default=DETECTOR_DEFAULTS["steps"],
        help="minibatch steps each member trains for",
    )
    detector.add_argument(
        "--trim",
        type=FRACTION,
        default=DETECTOR_DEFAULTS["trim"],
        help="fraction of rows with the lowest log p(x) left out of each member's second half of training",
    )
    detector.add_argument("--epochs", type=POSITIVE_INTEGER, help="passes over the data, instead of --steps")
    detector.add_argument(
        "--num-samples",
        type=POSITIVE_INTEGER,
        default=DETECTOR_DEFAULTS["num_samples"],
        help="importance samples K per row",
    )
    detector.add_argument("--seed", type=SEED, default=0, help="seeds the networks, training and scoring")
    detector.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    detector.add_argument("--overwrite", action="store_true", help="replace a detector already in --out")
    detector.add_argument("--quiet", action="store_true", help="no progress bar")
    detector.set_defaults(command=novelty.fit_detector)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (0, 2 for a user error, 3 for a numerical fault, 130/143
    after Ctrl-C/SIGTERM: :mod:`pyro_vae.cli.errors`)."""
    args = build_parser().parse_args(argv)

    def command() -> int:
        _check_outputs(args)
        return args.command(args)

    return run_command(f"pyro-vae {args.command_name}", command)


FOLDER_OUTPUTS = ("train", "train-gan", "score", "fit-detector")


def _check_outputs(args: argparse.Namespace) -> None:
    """The paths a command will write, checked before it does any work."""
    if getattr(args, "out", None):
        check_output(Path(args.out), "--out", folder=args.command_name in FOLDER_OUTPUTS)
    if getattr(args, "json", None):
        check_output(Path(args.json), "--json", folder=False)


if __name__ == "__main__":
    sys.exit(main())
