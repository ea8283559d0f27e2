"""Commands on a trained run: ``evaluate``, ``sample``, ``reconstruct`` and ``style``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from pyro_vae import plots
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.cli.gan_run import GANRun, load_gan_run
from pyro_vae.cli.inputs import check_shape, chosen_split, read_data
from pyro_vae.cli.report import (
    class_grid,
    conditional_score_table,
    gan_class_grid,
    score_name,
    score_table,
    style_transfer,
)
from pyro_vae.cli.stock import GAN_MODEL, Run, checkpoint_path, load_run, run_from
from pyro_vae.device import resolve_device
from pyro_vae.scoring import (
    ADAPTIVE_FIRST_SAMPLES,
    ADAPTIVE_MAX_SAMPLES,
    FIXED_SAMPLES,
    adaptive_log_likelihood,
    elbo,
)


def data_of_run(run: Run, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """The requested split of ``--data`` (default: the run's own data set), preprocessed as in training."""
    spec = args.data or run.config["dataset"]
    data_dir = args.data_dir if args.data else (args.data_dir or run.config.get("data_dir"))
    args.split = chosen_split(args.split, spec, args.data is not None)  # shown in titles and results
    x, y = read_data(spec, data_dir, args.split)
    check_shape(x, run.config["x_shape"], spec)
    x = run.preprocessor.transform(x).to(run.device)
    run.model.likelihood.check_support(x)
    return x, y, spec


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    return tensor.mean().item(), (tensor.std().item() / math.sqrt(len(tensor))) if len(tensor) > 1 else 0.0


def _rows(run: Run, x: torch.Tensor, labels: torch.Tensor | None, num_samples: int) -> list[dict]:
    if run.conditional:
        return conditional_score_table(run.model, run.guide, x, labels, run.config["num_classes"], num_samples)[0]
    return score_table(run.model, run.guide, x, labels, num_samples)


def _adaptive_rows(run: Run, x: torch.Tensor, args: argparse.Namespace, results: dict) -> tuple[list[dict], str]:
    """Rows of the ELBO and log p(x) with K adapted per datum (``--tolerance``), and the score's label."""
    if run.conditional:
        raise ValueError("--tolerance works with unconditional runs; drop it to sum over the classes at fixed K")
    first, most = args.num_samples or ADAPTIVE_FIRST_SAMPLES, args.max_samples or ADAPTIVE_MAX_SAMPLES
    found = adaptive_log_likelihood(
        run.model, run.guide, x.float(), tolerance=args.tolerance, first_samples=first, max_samples=most,
        progress=None,
    )  # fmt: skip
    elbos = elbo(run.model, run.guide, x.float()).tolist()
    counts = found.num_samples.double()
    unmet = ~(found.standard_error <= args.tolerance)  # a standard error that is not a number is unmet too
    results.update(
        num_samples=first, tolerance=args.tolerance, max_samples=most, mean_num_samples=counts.mean().item(),
        tolerance_unmet=int(unmet.sum()),
    )  # fmt: skip
    rows = [{"elbo": e, "log_likelihood": v} for e, v in zip(elbos, found.log_likelihood.tolist(), strict=True)]
    return rows, f"{score_name(run.config)}, K={counts.mean().item():.0f} on average"


def evaluate(args: argparse.Namespace) -> int:
    run = load_run(args.run, args.device)
    x, labels, spec = data_of_run(run, args)
    results = {"data": spec, "split": args.split}
    if args.tolerance is None:
        if args.max_samples is not None:
            raise ValueError("--max-samples bounds an adaptive K: pass --tolerance too")
        results["num_samples"] = num_samples = args.num_samples or FIXED_SAMPLES
        rows = _rows(run, x, labels, num_samples)
        score = f"{score_name(run.config)}, K={num_samples}"
    else:
        rows, score = _adaptive_rows(run, x, args, results)
    results["count"] = len(rows)
    names = {"elbo": "ELBO", "log_likelihood": score}
    if run.conditional:
        names = {"log_likelihood": f"log p(x), K={results['num_samples']}/class"}
        if labels is not None:
            names["log_likelihood_given_label"] = "log p(x | label)"
    print(f"{spec} {args.split} ({len(rows)} data), nats per datum:")
    for key, label in names.items():
        results[key], results[f"{key}_stderr"] = _mean_and_stderr([row[key] for row in rows])
        print(f"  {label:<22s} {results[key]:10.3f} ± {results[key + '_stderr']:.3f}")
    if args.tolerance is not None:
        print(
            f"  K adapted per datum: {results['num_samples']} first, doubled until the standard error is at most "
            f"{args.tolerance:g} nats, at most {results['max_samples']}; {results['tolerance_unmet']} data did not "
            "meet the tolerance"
        )
    if run.conditional and labels is not None:
        results["generative_classifier_accuracy"] = sum(row["predicted"] == row["label"] for row in rows) / len(rows)
        print(f"  generative classifier accuracy {results['generative_classifier_accuracy']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _require_images(run: Run, command: str) -> None:
    if len(run.config["x_shape"]) != 3:
        raise ValueError(f"{command} draws images; this run's data are not images")


def sample(args: argparse.Namespace) -> int:
    """``pyro-vae sample`` on a VAE run (means of p(x | z) at z ~ p(z)) or a GAN run (g(z))."""
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(checkpoint_path(args.run), map_location=device)
    if checkpoint.config.get("model") == GAN_MODEL:
        return _sample_gan(load_gan_run(checkpoint, device), args)
    run = run_from(checkpoint, device)
    _require_images(run, "sample")
    if args.label is not None and not run.conditional:
        raise ValueError("--class needs a run trained with --conditional")
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out else run.directory / "samples.png"
    dataset = run.config["dataset"]
    if run.conditional and args.label is None:
        class_grid(run.model, run.config["num_classes"], 10, out, f"{dataset}: a row per class, a column per z")
    else:
        with torch.no_grad():
            z = run.model.prior().sample((args.num,))
            if run.conditional:
                _check_class(args.label, run.config["num_classes"])
                images = run.model.decode(z, torch.full((args.num,), args.label, device=z.device))
            else:
                images = run.model.decode(z)
        title = f"{dataset}: {args.num} samples" + ("" if args.label is None else f" of class {args.label}")
        plots.image_grid(images, out, title)
    print(f"wrote {out}")
    return 0


def _check_class(label: int, num_classes: int) -> None:
    if not 0 <= label < num_classes:
        raise ValueError(f"--class must be in 0..{num_classes - 1}, got {label}")


def _sample_gan(run: GANRun, args: argparse.Namespace) -> int:
    """A GAN run's samples: ``--num`` of them, of ``--class`` if given, or a row per class."""
    classes = run.config["num_classes"]
    if args.label is not None and classes is None:
        raise ValueError("--class needs a GAN trained with --conditional")
    torch.manual_seed(args.seed)
    out = Path(args.out) if args.out else run.directory / "samples.png"
    dataset = run.config["dataset"]
    if classes is not None and args.label is None:
        gan_class_grid(run.generator, classes, 10, out, f"{dataset}: a row per class, a column per z")
    else:
        labels = None
        if classes is not None:
            _check_class(args.label, classes)
            labels = torch.full((args.num,), args.label, device=next(run.generator.parameters()).device)
        title = f"{dataset}: {args.num} GAN samples" + ("" if args.label is None else f" of class {args.label}")
        plots.image_grid(run.generator.sample(args.num, labels), out, title)
    print(f"wrote {out}")
    return 0


def _reconstructions(run: Run, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Decoded posterior means; a conditional run uses the given labels, else its classifier's."""
    if not run.conditional:
        return run.model.decode(run.guide.posterior(x).mean)
    if labels is None:
        labels = run.guide.label_posterior(x).probs.argmax(-1)
    return run.model.decode(run.guide.posterior(x, labels).mean, labels)


def reconstruct(args: argparse.Namespace) -> int:
    run = load_run(args.run, args.device)
    _require_images(run, "reconstruct")
    x, labels, spec = data_of_run(run, args)
    shown = x[: args.num]
    with torch.no_grad():
        reconstructions = _reconstructions(run, shown, None if labels is None else labels[: args.num].to(x.device))
    out = Path(args.out) if args.out else run.directory / "reconstructions.png"
    plots.reconstruction_grid(shown, reconstructions, out, f"{spec} {args.split}: data and reconstructions")
    print(f"wrote {out}")
    return 0


def style(args: argparse.Namespace) -> int:
    run = load_run(args.run, args.device)
    if not run.conditional:
        raise ValueError("style transfer needs a run trained with --conditional")
    _require_images(run, "style")
    x, labels, spec = data_of_run(run, args)
    if labels is None:
        raise ValueError(f"style transfer encodes data with their labels, and {spec} has none")
    out = Path(args.out) if args.out else run.directory / "style_transfer.png"
    style_transfer(
        run.model,
        run.guide,
        x[: args.num],
        labels[: args.num].to(x.device),
        run.config["num_classes"],
        out,
        f"{spec} {args.split}: data (top) and their z decoded as every class",
    )
    print(f"wrote {out}")
    return 0
