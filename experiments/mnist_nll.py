"""The classic number: test NLL of a VAE on statically binarized MNIST.

Larochelle's fixed binarization (``../shared/data/binarized-mnist``, 50k train / 10k valid / 10k
test). The VAE (MLP encoder and decoder, Bernoulli likelihood; by default the VampPrior of
Tomczak & Welling 2018, with ``--prior normal`` N(0, I); one stochastic layer, or with ``--model
hierarchical`` a top-down hierarchy of ``--layers``, the VampPrior at its top; trained by the
ELBO, or with ``--loss iwae|dreg`` by the importance-weighted bound of ``--particles``) trains
with ``pyro_vae.fit`` for a budget of training minutes, with early stopping on the validation ELBO (static binarization
overfits) and optional KL warm-up; then the test NLL = -log p(x) is estimated with K importance
samples per image (default 5,000; Burda et al. 2016). Printed beside the published numbers of
Pythae's reproduction table and of Burda et al.; ends with one ``summary:`` line.

    .venv/bin/python experiments/mnist_nll.py --minutes 60 --threads 1   # 86.82 nats (docs/performance_results.md)
    .venv/bin/python experiments/mnist_nll.py --minutes 60 --prior normal --latent-dim 50   # 89.93
    .venv/bin/python experiments/mnist_nll.py --minutes 60 --threads 1 --loss iwae --particles 5
    .venv/bin/python experiments/mnist_nll.py --minutes 60 --threads 1 --model hierarchical --layers 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyro
import torch

import pyro_vae
from pyro_vae.checkpoint import save_checkpoint
from pyro_vae.guides import AmortizedNormal, TopDownGuide
from pyro_vae.models import VAE, HierarchicalVAE, VampPriorVAE
from pyro_vae.models.vampprior import initial_pseudo_inputs

PUBLISHED = {
    "Pythae VAE": 89.78,
    "Pythae IWAE (k=50)": 86.82,
    "Pythae VampPrior VAE": 85.79,
    "Burda et al. IWAE (k=50), static binarization": 87.10,
}


def load(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / "binarized_mnist.npz"
    if not path.exists():
        raise SystemExit(f"{path} not found; pass --data-dir (see ../shared/data/README.md)")
    with np.load(path) as archive:
        splits = ("train", "valid", "test")
        return {split: torch.as_tensor(archive[split], dtype=torch.float32)[:, None] for split in splits}


def build(args: argparse.Namespace, hidden: list[int], train: torch.Tensor):
    """The model and guide the arguments describe (the VampPrior's pseudo-inputs start at random
    training images moved inside (0, 1), so the clip passes gradients)."""
    shape = (1, 28, 28)

    def pseudo_inputs() -> torch.Tensor:
        return initial_pseudo_inputs(train, args.pseudo_inputs, (0.0, 1.0))

    if args.model == "hierarchical":
        model = HierarchicalVAE.build(shape, args.latent_dim, hidden, "mlp", "bernoulli", args.layers)
        guide = TopDownGuide.build_for(model, shape, hidden, "mlp")
        if args.prior == "vampprior":
            model.use_vampprior(guide.posterior, pseudo_inputs(), bounds=(0.0, 1.0))
        return model, guide
    if args.prior == "normal":  # built first, as before the VampPrior option: the same seed, the same run
        model = VAE.build(shape, args.latent_dim, hidden, "mlp", "bernoulli")
    guide = AmortizedNormal.build(shape, args.latent_dim, hidden, "mlp")
    if args.prior == "vampprior":
        model = VampPriorVAE.build_for(guide, pseudo_inputs(), args.latent_dim, hidden, "mlp", bounds=(0.0, 1.0))
    return model, guide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/binarized-mnist")
    parser.add_argument("--minutes", type=float, default=60.0, help="training-time budget")
    parser.add_argument("--epochs", type=int, default=1000, help="at most this many epochs")
    parser.add_argument("--hidden", default="300,300", help="encoder widths (the decoder mirrors them)")
    parser.add_argument("--latent-dim", type=int, default=40)
    parser.add_argument(
        "--model",
        choices=("vae", "hierarchical"),
        default="vae",
        help="one stochastic layer, or --layers of them with top-down inference (models/hierarchical.py)",
    )
    parser.add_argument("--layers", type=int, default=2, help="stochastic layers of --model hierarchical")
    parser.add_argument("--prior", choices=("normal", "vampprior"), default="vampprior")
    parser.add_argument("--pseudo-inputs", type=int, default=500, help="K of the VampPrior")
    parser.add_argument(
        "--loss",
        choices=("elbo", "iwae", "dreg"),
        default="elbo",
        help="training objective: the ELBO, the IWAE bound or the IWAE bound with DReG gradients",
    )
    parser.add_argument("--particles", type=int, default=5, help="importance samples per datum for iwae and dreg")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=float, default=10.0, help="epochs of linear KL warm-up (0: none)")
    parser.add_argument(
        "--free-bits", type=float, default=0.0, help="floor each latent site's KL term at this many nats (0: none)"
    )
    parser.add_argument("--patience", type=int, default=30, help="early stopping on the validation ELBO")
    parser.add_argument("--num-samples", type=int, default=5000, help="importance samples K for the test NLL")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/mnist_nll")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load(Path(args.data_dir))
    hidden = [int(width) for width in args.hidden.split(",")]
    pyro.set_rng_seed(args.seed)
    model, guide = build(args, hidden, data["train"])
    cpu_start = time.process_time()
    history = pyro_vae.fit(
        model,
        guide,
        data["train"],
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_epochs=args.warmup,
        free_bits=args.free_bits,
        validation=data["valid"],
        patience=args.patience,
        seed=args.seed,
        max_minutes=args.minutes,
        loss="auto" if args.loss == "elbo" else args.loss,
        num_particles=1 if args.loss == "elbo" else args.particles,
    )
    train_minutes, cpu_minutes = history.wall_time / 60, (time.process_time() - cpu_start) / 60
    history.to_csv(out / "history.csv")
    save_checkpoint(out / "checkpoint.pt", model, guide, {"script": "mnist_nll", "arguments": vars(args)})
    print(
        f"trained {len(history.epoch)} epochs in {train_minutes:.1f} min ({cpu_minutes:.1f} CPU-min); best epoch "
        f"{history.best_epoch}, validation {history.validation_objective} {max(history.val_elbo):.2f}"
    )
    model.eval()
    guide.eval()
    start = time.perf_counter()
    log_px = pyro_vae.log_likelihood(model, guide, data["test"], num_samples=args.num_samples, progress=True)
    test_nll = -log_px.mean().item()
    score_minutes = (time.perf_counter() - start) / 60
    test_elbo = pyro_vae.elbo(model, guide, data["test"], num_samples=10).mean().item()
    per_site = pyro_vae.latent_rates(model, guide, data["test"][:1000])
    rates = {site: rate.mean().item() for site, rate in per_site.items()}
    print("rate per latent site (nats per test datum; near 0: collapsed onto its prior):", rates)
    print(f"test NLL (K = {args.num_samples}): {test_nll:.2f} nats; -ELBO {-test_elbo:.2f} ({score_minutes:.1f} min)")
    print("| model | test NLL (nats) |\n| --- | ---: |")
    prior = "VampPrior" if args.prior == "vampprior" else "N(0, I)"
    objective = "ELBO" if args.loss == "elbo" else f"{args.loss.upper()} (K = {args.particles})"
    objective += f" with free bits (λ = {args.free_bits:g})" if args.free_bits else ""
    setting = f"{args.hidden} MLP, {args.latent_dim}-d z, {prior} prior, {objective}, {train_minutes:.0f} min"
    name = f"{args.layers}-layer hierarchical VAE" if args.model == "hierarchical" else "VAE"
    print(f"| pyro_vae {name}, {setting} | {test_nll:.2f} |")
    for name, value in PUBLISHED.items():
        print(f"| {name} | {value:.2f} |")
    results = vars(args) | {
        "test_nll": test_nll,
        "test_neg_elbo": -test_elbo,
        "epochs_run": len(history.epoch),
        "best_epoch": history.best_epoch,
        "train_minutes": train_minutes,
        "train_cpu_minutes": cpu_minutes,
        "score_minutes": score_minutes,
        "rates": rates,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"summary: test_nll={test_nll:.2f} train_minutes={train_minutes:.1f} epochs={len(history.epoch)} "
        f"num_samples={args.num_samples} loss={args.loss} model={args.model} free_bits={args.free_bits:g}"
    )


if __name__ == "__main__":
    main()
