"""GANs beside VAEs on one sample-quality yardstick: MNIST and Fashion-MNIST.

For each data set a small convolutional classifier is trained on its training images
(:func:`pyro_vae.sample_quality.train_feature_classifier`); its penultimate features are the
space in which every model's samples are compared with the test images. Models, each trained
from scratch for every seed:

- ``vae``: a stock MLP VAE (Bernoulli likelihood, dynamic binarization), samples the means of
  p(x | z) at z ~ p(z);
- ``vampprior``: the same with the VampPrior (Tomczak & Welling 2018);
- ``hierarchical``: the stock two-layer top-down VAE, samples drawn layer by layer;
- ``dcgan``: DCGAN's generator and discriminator (:mod:`pyro_vae.gan`) trained by the
  non-saturating game (:mod:`pyro_vae.adversarial`);
- ``cgan``: the class-conditional DCGAN, sampled with classes drawn uniformly;
- ``vaegan``: VAE-GAN (Larsen et al. 2016): the stock VAE trained by ``fit`` with the
  adversarial term of a PatchGAN discriminator (:class:`pyro_vae.vae_gan.AdversarialTerm`,
  weight ``--vaegan-weight``, shown binary draws of p(x | z) beside the binarized data), sampled as
  the VAE is; its ELBO and NLL stay defined.

Metrics (:mod:`pyro_vae.sample_quality`): the Fréchet distance of the samples' features to the
test images' (FD), precision and recall (k = 3), the classes the classifier assigns to the
samples (present, and the total-variation distance to uniform: mode collapse), and for the VAEs
the test log-likelihood (importance-sampled, K = ``--num-samples``; a GAN has none). Mean ± sd
over ``--seeds``, training wall time beside. Writes ``results.md`` and ``samples.png`` to
``--out``; ends with one ``summary:`` line.

Settings are chosen on held-out training images, never on the test set: ``--reference
validation`` trains on all but the last 10,000 training images and compares the samples with
those (the VAE-GAN's weight was picked so, see docs/performance_results.md).

    .venv/bin/python experiments/gan_vs_vae.py
    .venv/bin/python experiments/gan_vs_vae.py --reference validation --sets mnist --models vaegan --vaegan-weight 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch

import pyro_vae
from pyro_vae.adversarial import fit_gan
from pyro_vae.data import load_dataset
from pyro_vae.gan import Discriminator, Generator
from pyro_vae.guides import AmortizedNormal, TopDownGuide
from pyro_vae.models import VAE, HierarchicalVAE, VampPriorVAE
from pyro_vae.models.vampprior import initial_pseudo_inputs
from pyro_vae.sample_quality import class_coverage, frechet_distance, precision_recall, train_feature_classifier
from pyro_vae.vae_gan import AdversarialTerm

SETS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
MODELS = {
    "vae": "VAE",
    "vampprior": "VampPrior VAE",
    "hierarchical": "hierarchical VAE",
    "dcgan": "DCGAN",
    "cgan": "class-conditional DCGAN",
    "vaegan": "VAE-GAN",
}
HELD_OUT = 10000  # the last training images, the reference of --reference validation
GANS = ("dcgan", "cgan")


def train_vae(kind: str, train: torch.Tensor, args: argparse.Namespace, seed: int):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    shape, hidden = tuple(train.shape[1:]), args.hidden
    if kind == "hierarchical":
        model = HierarchicalVAE.build(shape, args.latent_dim, hidden, "mlp", "bernoulli", 2)
        guide = TopDownGuide.build_for(model, shape, hidden, "mlp")
    else:
        guide = AmortizedNormal.build(shape, args.latent_dim, hidden, "mlp")
        model = VAE.build(shape, args.latent_dim, hidden, "mlp", "bernoulli")
        if kind == "vampprior":
            pseudo = initial_pseudo_inputs(train, args.pseudo, (0.0, 1.0))
            model = VampPriorVAE.build_for(guide, pseudo, args.latent_dim, hidden, "mlp", bounds=(0.0, 1.0))
    options = {"transform": torch.bernoulli, "validation": None, "seed": seed, "progress": None}
    if kind == "vaegan":
        torch.manual_seed(seed)
        discriminator = Discriminator(shape, args.gan_hidden, "patch")
        term = AdversarialTerm(model, guide, discriminator, weight=args.vaegan_weight, compare=args.vaegan_compare)
        options["extra_loss"] = term  # with draws the discriminator sees binary images on both sides
    pyro_vae.fit(model, guide, train, epochs=args.vae_epochs, **options)
    return model.eval(), guide.eval()


def vae_samples(model, kind: str, n: int) -> torch.Tensor:
    with torch.no_grad():
        if kind != "hierarchical":
            return model.decode(model.prior().sample((n,)))
        state = model.lift(model.layers, model.prior().sample((n,)))
        for layer in range(model.layers - 1, 0, -1):
            state = model.lift(layer, model.conditional_prior(layer, state).sample(), state)
        return model.likelihood.mean(model.decoder(state))


def train_gan(kind: str, train: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace, seed: int):
    torch.manual_seed(seed)
    classes = 10 if kind == "cgan" else None
    generator = Generator(train.shape[1:], args.gan_latent_dim, args.gan_hidden, "conv", num_classes=classes)
    discriminator = Discriminator(train.shape[1:], args.gan_hidden, "dcgan", num_classes=classes)
    data = (train, labels) if classes else train
    fit_gan(generator, discriminator, data, epochs=args.gan_epochs, batch_size=64, seed=seed, progress=None)
    return generator.eval()


def evaluate(samples: torch.Tensor, asked: torch.Tensor | None, classifier, real_features: torch.Tensor) -> dict:
    features = classifier.features(samples)
    quality = precision_recall(real_features[: len(features)], features)
    coverage = class_coverage(classifier.predict(samples), 10)
    result = {
        "fd": frechet_distance(real_features, features),
        "precision": quality.precision,
        "recall": quality.recall,
        "classes": coverage.classes_present,
        "tv": coverage.total_variation,
    }
    if asked is not None:  # class-conditional: the share recognised as the class asked for
        result["class_match"] = (classifier.predict(samples) == asked).double().mean().item()
    return result


def run_set(name: str, args: argparse.Namespace) -> tuple[dict, dict, float]:
    data = load_dataset(name, Path(args.data_root) / name)
    train, labels, test, test_labels = data.train_x, data.train_y, data.test_x, data.test_y
    if args.reference == "validation":  # choose settings here: the test images stay untouched
        train, labels, test, test_labels = train[:-HELD_OUT], labels[:-HELD_OUT], train[-HELD_OUT:], labels[-HELD_OUT:]
    train, labels = train[: args.train_size], labels[: args.train_size]
    classifier = train_feature_classifier(train, labels, epochs=args.classifier_epochs, progress=None)
    accuracy = (classifier.predict(test) == test_labels).double().mean().item()
    real_features = classifier.features(test[: args.samples])
    results: dict[str, list[dict]] = {kind: [] for kind in args.models}
    grids: dict[str, torch.Tensor] = {}
    for seed in args.seeds:
        for kind in args.models:
            started = time.perf_counter()
            if kind in GANS:
                generator = train_gan(kind, train, labels, args, seed)
                minutes = (time.perf_counter() - started) / 60
                asked = torch.arange(args.samples) % 10 if kind == "cgan" else None
                samples = generator.sample(args.samples, asked, generator=torch.Generator().manual_seed(seed))
                result = evaluate(samples, asked, classifier, real_features)
            else:
                model, guide = train_vae(kind, train, args, seed)
                minutes = (time.perf_counter() - started) / 60
                pyro.set_rng_seed(seed)
                samples = vae_samples(model, kind, args.samples)
                result = evaluate(samples, None, classifier, real_features)
                binary = torch.bernoulli(test[: args.test_size], generator=torch.Generator().manual_seed(seed))
                result["nll"] = -pyro_vae.log_likelihood(model, guide, binary, num_samples=args.num_samples).mean()
                result["nll"] = result["nll"].item()
            result["minutes"] = minutes
            results[kind].append(result)
            grids.setdefault(kind, samples[:10].cpu())
            print(
                f"{SETS[name]} seed {seed} {kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True
            )
    return results, {"data": test[:10], **grids}, accuracy


def spread(values: list[float]) -> float:
    """The sample standard deviation over seeds (0 for one seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def cell(values: list[float], digits: int = 2) -> str:
    return f"{np.mean(values):.{digits}f}" + (f" ± {spread(values):.{digits}f}" if len(values) > 1 else "")


def plot(grids: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    rows = [(name, kind) for name in grids for kind in grids[name]]
    figure, axes = plt.subplots(len(rows), 1, figsize=(8, 0.95 * len(rows)))
    for axes_row, (name, kind) in zip(axes, rows, strict=True):
        images = grids[name][kind].squeeze(1).numpy()
        axes_row.imshow(np.concatenate(list(images), axis=1), cmap="gray", vmin=0, vmax=1)
        axes_row.set_axis_off()
        label = "data" if kind == "data" else MODELS[kind]
        axes_row.set_title(f"{SETS[name]}: {label}", fontsize=8, loc="left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--sets", type=lambda text: text.split(","), default=list(SETS))
    parser.add_argument("--models", type=lambda text: text.split(","), default=list(MODELS))
    parser.add_argument(
        "--reference", choices=("test", "validation"), default="test", help="compare with test or held-out images"
    )
    parser.add_argument("--train-size", type=int, default=60000, help="training images used (at most)")
    parser.add_argument("--seeds", type=lambda text: [int(v) for v in text.split(",")], default=[0, 1, 2])
    parser.add_argument("--hidden", type=lambda text: [int(v) for v in text.split(",")], default=[512, 256])
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--pseudo", type=int, default=100, help="VampPrior pseudo-inputs")
    parser.add_argument("--vae-epochs", type=int, default=5)
    parser.add_argument("--gan-hidden", type=lambda text: [int(v) for v in text.split(",")], default=[32, 64])
    parser.add_argument("--gan-latent-dim", type=int, default=32)
    parser.add_argument("--gan-epochs", type=int, default=3)
    parser.add_argument("--vaegan-weight", type=float, default=1.0, help="the VAE-GAN's adversarial weight")
    parser.add_argument(
        "--vaegan-compare", choices=("draw", "mean"), default="draw", help="what the VAE-GAN's discriminator sees"
    )
    parser.add_argument("--classifier-epochs", type=int, default=3)
    parser.add_argument(
        "--samples", type=int, default=5000, help="samples per model (and test images as the reference)"
    )
    parser.add_argument("--test-size", type=int, default=1000, help="test images of the VAEs' log-likelihood")
    parser.add_argument("--num-samples", type=int, default=100, help="K of the VAEs' log-likelihood")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/gan_vs_vae")
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(MODELS)) + sorted(set(args.sets) - set(SETS))
    if unknown:
        parser.error(f"unknown models or sets {unknown}; models: {', '.join(MODELS)}; sets: {', '.join(SETS)}")

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables, grids, accuracies = {}, {}, {}
    for name in args.sets:  # the table so far is written after every data set: a stopped run keeps it
        tables[name], grids[name], accuracies[name] = run_set(name, args)
        plot(grids, out / "samples.png")
        lines, summary = report(tables, accuracies, args, (time.perf_counter() - started) / 60)
        (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"summary: {' '.join(summary)} seeds={len(args.seeds)} minutes={(time.perf_counter() - started) / 60:.1f}")


def report(tables: dict, accuracies: dict, args: argparse.Namespace, minutes: float) -> tuple[list[str], list[str]]:
    """The results table of the data sets done so far, and their summary entries."""
    reference = "test" if args.reference == "test" else "held-out training"
    lines = [
        "# Sample quality: GANs beside VAEs",
        "",
        f"Features: a convolutional classifier per data set ({args.classifier_epochs} epochs; accuracy on the "
        f"{reference} images "
        + ", ".join(f"{SETS[name]} {accuracies[name]:.3f}" for name in tables)
        + f"). {args.samples} samples per model against as many {reference} images; VAEs {args.vae_epochs} "
        f"epochs, GANs {args.gan_epochs} epochs, VAE-GAN weight {args.vaegan_weight:g} (its discriminator shown "
        f"{args.vaegan_compare}s of p(x | z)); seeds "
        f"{', '.join(map(str, args.seeds))} (mean ± sd). FD: Fréchet distance "
        "(lower is better); classes: classes the classifier assigns to any sample; TV: total-variation distance of "
        f"the assigned classes to uniform (0: all classes alike); NLL: {reference} -log p(x), K = {args.num_samples}, "
        f"{args.test_size} images.",
        "",
        "| data | model | FD | precision | recall | classes | TV | NLL (nats) | minutes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    summary = []
    for name, table in tables.items():
        for kind, runs in table.items():
            values = {key: [run[key] for run in runs] for key in runs[0]}
            nll = cell(values["nll"], 1) if "nll" in values else "n/a"
            lines.append(
                f"| {SETS[name]} | {MODELS[kind]} | {cell(values['fd'])} | {cell(values['precision'])} | "
                f"{cell(values['recall'])} | {cell(values['classes'], 1)} | {cell(values['tv'])} | {nll} | "
                f"{cell(values['minutes'], 1)} |"
            )
            prefix = f"{name.split('-')[0]}_{kind}"
            summary += [f"{prefix}_{key}={np.mean(values[key]):.3f}" for key in ("fd", "precision", "recall")]
            summary.append(f"{prefix}_minutes={np.mean(values['minutes']):.3f}")
            summary.append(f"{prefix}_fd_sd={spread(values['fd']):.3f}")
            if "nll" in values:
                summary.append(f"{prefix}_nll={np.mean(values['nll']):.3f}")
            if "class_match" in values:
                summary.append(f"{prefix}_class_match={np.mean(values['class_match']):.3f}")
    done = ", ".join(SETS[name] for name in tables)
    lines += ["", f"Data sets done: {done}; wall time so far {minutes:.1f} min. ![samples](samples.png)"]
    return lines, summary


if __name__ == "__main__":
    main()
