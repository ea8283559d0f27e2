"""Conditional VAE and semi-supervised M2 on MNIST: generative classification, label efficiency,
class-conditional samples.

1. A fully supervised conditional VAE: test log p(x) per datum with the label summed out, the
   generative classifier argmax_y p(y | x), and class consistency (samples drawn for class c and
   recognised as c by that classifier).
2. M2 (Kingma et al. 2014) with 100 and 600 labels per class and with all labels: test accuracy
   of q(y | x). Labelled data are repeated ``--oversample`` times per epoch so that the few labels
   are seen as often as the unlabelled data in Kingma's alternating scheme; q(y | x) is a small
   convolutional network (``--classifier-arch``), and the grey-level images are binarized afresh
   in every minibatch (dynamic binarization; ``--static`` binarizes once at 0.5, as the
   supervised model and every test set are).

Writes ``class_grid.png`` (a row per class), ``style_transfer.png`` and ``results.md`` to
``--out`` and ends with one ``summary:`` line.

    .venv/bin/python experiments/conditional_mnist.py --data-dir ../shared/data/mnist
    .venv/bin/python experiments/conditional_mnist.py --semi-supervised adgm --labels-per-class 10 --draws 3 \
        --semi-supervised-only --m2-epochs 5 --oversample 100   # 100 labels in all, three labelled sets
    .venv/bin/python experiments/conditional_mnist.py --features m1 --labels-per-class 10 --draws 3 \
        --semi-supervised-only --m2-epochs 30 --oversample 100  # M1 + M2 (no full run yet)

3. With ``--semi-supervised adgm`` the semi-supervised runs use the auxiliary deep generative
   model (Maaløe et al. 2016, ``models/adgm.py``): q(a | x) q(y | a, x) q(z | a, y, x), and
   ``--draws`` labelled sets per setting give the mean accuracy and its spread;
   ``--semi-supervised-only`` runs only those (no supervised model, no run with every label).
4. With ``--features m1`` the semi-supervised model sees the codes of an unsupervised VAE (M1)
   instead of the pixels, Kingma et al.'s M1+M2 (96.67 % with 100 labels): a fresh draw from
   q(z1 | x) in every minibatch, a Gaussian likelihood with learned variance, MLP networks.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

import pyro_vae
from pyro_vae import plots
from pyro_vae.conditional import class_scores
from pyro_vae.data import MISSING_LABEL, hide_labels, load_dataset
from pyro_vae.guides import AmortizedNormal, AuxiliaryNormal, ConditionalNormal
from pyro_vae.latent import encode
from pyro_vae.models import VAE, AuxiliaryDGM, ConditionalVAE

CLASSES = 10


@dataclass
class Inputs:
    """What the semi-supervised model sees: training inputs (turned into one minibatch's data by
    ``transform``), test inputs, their datum shape, likelihood and network architecture."""

    train: torch.Tensor
    test: torch.Tensor
    transform: Callable[[torch.Tensor], torch.Tensor]
    shape: tuple[int, ...]
    likelihood: str
    arch: str
    classifier_arch: str


def pixel_inputs(args: argparse.Namespace, grey_x: torch.Tensor, test_x: torch.Tensor) -> Inputs:
    """The grey-level images, binarized afresh in every minibatch (or once at 0.5, ``--static``)."""
    binarize = (lambda x: (x > 0.5).float()) if args.static else torch.bernoulli
    return Inputs(grey_x, test_x, binarize, tuple(grey_x.shape[1:]), "bernoulli", args.arch, args.classifier_arch)


def m1_inputs(args: argparse.Namespace, grey_x: torch.Tensor, test_x: torch.Tensor) -> Inputs:
    """Kingma et al.'s M1 features: a VAE (``--m1-latent-dim``) trained without labels on all
    training images for ``--m1-epochs``; the semi-supervised model then sees a fresh draw from
    q(z1 | x) of each training image in every minibatch, and the posterior mean of each test image."""
    pyro.set_rng_seed(args.seed)
    shape = tuple(grey_x.shape[1:])
    model = VAE.build(shape, args.m1_latent_dim, args.hidden, "mlp", "bernoulli")
    guide = AmortizedNormal.build(shape, args.m1_latent_dim, args.hidden, "mlp")
    start = time.perf_counter()
    pyro_vae.fit(model, guide, grey_x, epochs=args.m1_epochs, validation=None, progress=None, transform=torch.bernoulli)
    with torch.no_grad():
        q = guide.posterior(grey_x)
        train = torch.stack([q.mean, q.stddev], 1)
    test = encode(guide, test_x)
    print(f"M1 ({args.m1_epochs} epochs, {(time.perf_counter() - start) / 60:.1f} min) encodes the images", flush=True)
    return Inputs(train, test, _draw_features, (args.m1_latent_dim,), "gaussian-learned", "mlp", "mlp")


def _draw_features(stats: torch.Tensor) -> torch.Tensor:
    """z1 ~ q(z1 | x) from the stored location and scale ``[batch, 2, dim]``."""
    return stats[:, 0] + stats[:, 1] * torch.randn_like(stats[:, 0])


def build(
    args: argparse.Namespace, x_shape, alpha: float = 0.0, classifier_arch: str | None = None, kind="m2",
    likelihood: str = "bernoulli", arch: str | None = None,
):  # fmt: skip
    """The conditional VAE (``kind="m2"``) or the auxiliary deep generative model (``"adgm"``)."""
    arch = arch or args.arch
    if kind == "adgm":
        model = AuxiliaryDGM.build(
            x_shape, CLASSES, args.latent_dim, args.hidden, arch, likelihood, auxiliary_dim=args.auxiliary_dim
        )
        guide = AuxiliaryNormal.build(
            x_shape,
            CLASSES,
            args.latent_dim,
            args.hidden,
            arch,
            auxiliary_dim=args.auxiliary_dim,
            classifier_arch=classifier_arch,
        )
    else:
        model = ConditionalVAE.build(x_shape, CLASSES, args.latent_dim, args.hidden, arch, likelihood)
        guide = ConditionalNormal.build(
            x_shape, CLASSES, args.latent_dim, args.hidden, arch, classifier_arch=classifier_arch
        )
    if alpha > 0:
        model.classifier, model.alpha = guide.classifier, alpha
    return model, guide


def oversampled(x: torch.Tensor, labels: torch.Tensor, times: int) -> tuple[torch.Tensor, torch.Tensor]:
    labelled = labels != MISSING_LABEL
    extra = labelled.nonzero().squeeze(1).repeat(times - 1)
    return torch.cat([x, x[extra]]), torch.cat([labels, labels[extra]])


def supervised(args, train_x, train_y, test_x, test_y, out: Path) -> dict:
    pyro.set_rng_seed(args.seed)
    model, guide = build(args, train_x.shape[1:])
    start = time.perf_counter()
    history = pyro_vae.fit(model, guide, (train_x, train_y), epochs=args.epochs, patience=args.patience, progress=None)
    minutes = (time.perf_counter() - start) / 60
    scores = class_scores(model, guide, test_x, CLASSES, num_samples=args.score_samples, progress=None)
    draws = 10
    labels = torch.arange(CLASSES).repeat_interleave(draws)
    with torch.no_grad():
        z = model.prior().sample((draws,)).repeat(CLASSES, 1)  # the same z in every row
        images = model.decode(z, labels)
        drawn = model(None, torch.arange(1000) % CLASSES)  # x ~ p(x | z, y), binary like the data
    plots.image_grid(images, out / "class_grid.png", "conditional VAE: one row per class, one column per z", draws)
    consistency = class_scores(model, guide, drawn, CLASSES, num_samples=args.score_samples).predict()
    style_source = test_x[:8]
    with torch.no_grad():
        z = guide.posterior(style_source, test_y[:8]).mean
        transferred = torch.cat([model.decode(z, torch.full((8,), c)) for c in range(CLASSES)])
    plots.image_grid(
        torch.cat([style_source, transferred]),
        out / "style_transfer.png",
        "style transfer: test digits (top row), their z decoded as 0-9 (rows below)",
        8,
    )
    return {
        "log_px": scores.log_px.mean().item(),
        "gen_classifier_acc": (scores.predict() == test_y).float().mean().item(),
        "class_consistency": (consistency == torch.arange(1000) % CLASSES).float().mean().item(),
        "minutes": minutes,
        "best_epoch": history.best_epoch,
    }


def semi_supervised(args, inputs: Inputs, train_y, test_y, per_class: int | None) -> dict:
    """M2 (or the ADGM, ``--semi-supervised adgm``) on ``inputs`` (the images, or M1's features);
    with ``per_class`` labels per class, on ``--draws`` labelled sets (seeds ``--seed``,
    ``--seed`` + 1, ...), accuracy their mean."""
    draws = []
    for draw in range(args.draws if per_class is not None else 1):
        draws.append(one_draw(args, inputs, train_y, test_y, per_class, args.seed + draw))
        setting = f"{per_class or 'all'} labels per class"
        print(f"{args.semi_supervised}, {setting}, draw {draw + 1}: {draws[-1]}", flush=True)
    accuracies = torch.tensor([draw["acc"] for draw in draws])
    return {
        "acc": accuracies.mean().item(),
        "acc_sd": accuracies.std().item() if len(draws) > 1 else 0.0,
        "accs": accuracies.tolist(),
        "minutes": sum(draw["minutes"] for draw in draws),
    }


def one_draw(args, inputs: Inputs, train_y, test_y, per_class: int | None, seed: int) -> dict:
    pyro.set_rng_seed(seed)
    model, guide = build(
        args, inputs.shape, args.alpha, inputs.classifier_arch, args.semi_supervised, inputs.likelihood, inputs.arch
    )
    labels = train_y if per_class is None else hide_labels(train_y, per_class, seed)
    x, y = oversampled(inputs.train, labels, args.oversample) if per_class is not None else (inputs.train, labels)
    start = time.perf_counter()
    pyro_vae.fit(
        model,
        guide,
        (x, y),
        epochs=args.m2_epochs,
        loss="enum" if per_class is not None else "trace",  # nothing to enumerate with every label given
        validation=None,
        progress=None,
        transform=inputs.transform,
    )
    with torch.no_grad():
        accuracy = (guide.label_posterior(inputs.test).probs.argmax(-1) == test_y).float().mean().item()
    return {"acc": accuracy, "minutes": (time.perf_counter() - start) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--arch", default="mlp", choices=["mlp", "conv"])
    parser.add_argument("--hidden", type=lambda text: [int(v) for v in text.split(",")], default=[500, 500])
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=50, help="most epochs of the supervised conditional VAE")
    parser.add_argument(
        "--patience", type=int, default=5, help="stop when the held-out ELBO has not improved for this many epochs"
    )
    parser.add_argument("--m2-epochs", type=int, default=15, help="epochs of each M2 run")
    parser.add_argument("--alpha", type=float, default=50.0, help="weight of the auxiliary classification term")
    parser.add_argument("--classifier-arch", default="conv", choices=["mlp", "conv"], help="network of M2's q(y|x)")
    parser.add_argument("--static", action="store_true", help="M2 on images binarized once at 0.5, not dynamically")
    parser.add_argument("--oversample", type=int, default=10, help="repeats of each labelled datum per epoch")
    parser.add_argument("--labels-per-class", type=lambda text: [int(v) for v in text.split(",")], default=[100, 600])
    parser.add_argument(
        "--semi-supervised",
        choices=["m2", "adgm"],
        default="m2",
        help="M2, or the auxiliary deep generative model of Maaloe et al. 2016 (models/adgm.py)",
    )
    parser.add_argument(
        "--features",
        choices=["pixels", "m1"],
        default="pixels",
        help="what the semi-supervised model sees: the images, or the codes of an unsupervised VAE (Kingma's M1+M2)",
    )
    parser.add_argument("--m1-epochs", type=int, default=30, help="epochs of M1 (--features m1)")
    parser.add_argument("--m1-latent-dim", type=int, default=50, help="code size of M1 (--features m1)")
    parser.add_argument("--auxiliary-dim", type=int, default=100, help="dimension of the ADGM's auxiliary latent a")
    parser.add_argument("--draws", type=int, default=1, help="labelled sets drawn per --labels-per-class setting")
    parser.add_argument(
        "--semi-supervised-only",
        action="store_true",
        help="only the runs with --labels-per-class labels: no supervised model, no run with every label",
    )
    parser.add_argument("--train-rows", type=int, help="train on the first this many images only (smoke tests)")
    parser.add_argument("--score-samples", type=int, default=50, help="K per class for log p(x | y)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/conditional_mnist")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mnist", args.data_dir)
    data.train_x, data.train_y = data.train_x[: args.train_rows], data.train_y[: args.train_rows]
    train_x, test_x = (data.train_x > 0.5).float(), (data.test_x > 0.5).float()
    started = time.perf_counter()
    results = {}
    if not args.semi_supervised_only:
        results["supervised"] = supervised(args, train_x, data.train_y, test_x, data.test_y, out)
        print(f"supervised conditional VAE: {results['supervised']}")
    inputs = (m1_inputs if args.features == "m1" else pixel_inputs)(args, data.train_x, test_x)
    for per_class in args.labels_per_class + ([] if args.semi_supervised_only else [None]):
        name = f"m2_{per_class if per_class is not None else 'all'}"
        results[name] = semi_supervised(args, inputs, data.train_y, data.test_y, per_class)
        print(f"{name}: {results[name]}")

    lines = [
        "# Conditional VAE and M2 on MNIST (binarized at 0.5)",
        "",
        f"{args.arch} networks {args.hidden}, {args.latent_dim}-d latent, seed {args.seed}. M2: q(y|x) a "
        f"{inputs.classifier_arch} network, alpha {args.alpha}, labelled data repeated {args.oversample}x per epoch, "
        + ("images binarized at 0.5." if args.static else "images binarized afresh in every minibatch (dynamic).")
        + (
            f" M1: the {args.m1_latent_dim}-d codes of a VAE trained {args.m1_epochs} epochs without labels, drawn "
            "afresh in every minibatch."
            if args.features == "m1"
            else ""
        ),
        "",
        "| model | labels | metric | value | train minutes |",
        "| --- | --- | --- | ---: | ---: |",
    ]
    if "supervised" in results:
        sup = results["supervised"]
        lines += [
            f"| conditional VAE (epoch {sup['best_epoch']}, best held-out ELBO) | all | test log p(x), y summed out "
            f"(nats) | {sup['log_px']:.2f} | {sup['minutes']:.1f} |",
            f"| conditional VAE | all | generative classifier accuracy | {sup['gen_classifier_acc']:.4f} | |",
            f"| conditional VAE | all | class consistency of samples | {sup['class_consistency']:.4f} | |",
        ]
    semi_name = ("M1 + " if args.features == "m1" else "") + args.semi_supervised.upper()
    for name, result in results.items():
        if name.startswith("m2_"):
            labels = name[3:] + (" per class" if name != "m2_all" else "")
            spread = f" ± {result['acc_sd']:.4f} ({len(result['accs'])} draws)" if len(result["accs"]) > 1 else ""
            lines.append(
                f"| {semi_name} ({args.m2_epochs} epochs) | {labels} | q(y|x) test accuracy "
                f"| {result['acc']:.4f}{spread} | {result['minutes']:.1f} |"
            )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    minutes = (time.perf_counter() - started) / 60
    figures = "" if args.semi_supervised_only else "class_grid.png, style_transfer.png, "
    print(f"wrote {out}/{figures}results.md; total {minutes:.1f} min")
    print(f"summary: {' '.join(summary_pairs(results, minutes, args))}")


def summary_pairs(results: dict, minutes: float, args: argparse.Namespace) -> list[str]:
    """The summary line's ``key=value`` pairs: the supervised model's (when it ran), then one
    accuracy per semi-supervised setting (``m2_acc_100_per_class`` always, ``nan`` when not run, as
    before the other settings existed) and its spread over draws."""
    pairs = []
    if "supervised" in results:
        pairs.append(f"gen_classifier_acc={results['supervised']['gen_classifier_acc']:.4f}")
    pairs.append(f"m2_acc_100_per_class={results.get('m2_100', {}).get('acc', float('nan')):.4f}")
    if "supervised" in results:
        pairs.append(f"class_consistency={results['supervised']['class_consistency']:.4f}")
    semi = {name[3:]: result for name, result in results.items() if name.startswith("m2_")}
    pairs += [
        f"m2_acc_{setting}" + ("_per_class" if setting != "all" else "") + f"={result['acc']:.4f}"
        for setting, result in semi.items()
        if setting != "100"
    ]
    if "supervised" in results:
        sup = results["supervised"]
        pairs += [f"test_log_px={sup['log_px']:.2f}", f"best_epoch={sup['best_epoch']}"]
    pairs.append(f"minutes={minutes:.1f}")
    pairs += [
        f"m2_acc_{setting}_per_class_sd={result['acc_sd']:.4f}"
        for setting, result in semi.items()
        if len(result.get("accs", [])) > 1
    ]
    return [*pairs, f"semi_supervised={args.semi_supervised}", f"draws={args.draws}", f"features={args.features}"]


if __name__ == "__main__":
    main()
