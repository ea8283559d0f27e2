"""A peer side by side: the same MNIST VAE trained by Pythae's TrainingPipeline and by pyro_vae.fit.

Pythae (Chadebec et al. 2022, "Pythae: unifying generative autoencoders in Python") is the
library of VAE variants this project measures itself against. Both train the same network, a
784-400-50 MLP encoder (mean and log-variance) and a 50-400-784 MLP decoder with a Bernoulli
likelihood, on the same deterministically binarized MNIST training images, with Adam at the same
learning rate and batch size for the same number of epochs:

- Pythae: ``pythae.models.VAE`` with ``reconstruction_loss="bce"`` (analytic KL) and this
  encoder and decoder, trained by ``pythae.pipelines.TrainingPipeline``; the seconds of each
  epoch come from a Pythae training callback;
- pyro_vae: the same networks as a Pyro model and guide (Monte Carlo KL, ``Trace_ELBO``'s
  estimator), trained by ``pyro_vae.fit`` (``History.seconds``), eagerly and with the captured
  step (``capture=True``).

Both trained pairs are then scored by one estimator, ``pyro_vae.log_likelihood`` with K
importance samples on the test images (Pythae's decoder wrapped as a Pyro model, its encoder as
the guide), so the test NLLs differ by the training alone; Pythae's own ``get_nll`` on the first
``--check-images`` test images is printed beside ours as a cross-check of the wrapping. Ends with
one ``summary:`` line. Needs Pythae (``pip install pythae``, a benchmark extra).

    .venv/bin/python experiments/bench_pythae.py
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pythae.models import VAE as PythaeVAE
from pythae.models import VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.pipelines import TrainingPipeline
from pythae.trainers import BaseTrainerConfig
from pythae.trainers.training_callbacks import TrainingCallback
from torch import nn

import pyro_vae
from pyro_vae.data import load_dataset

HIDDEN, LATENT = 400, 50


class Encoder(BaseEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(784, HIDDEN), nn.ReLU())
        self.loc, self.log_var = nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h = self.hidden(x)
        return ModelOutput(embedding=self.loc(h), log_covariance=self.log_var(h))


class Decoder(BaseDecoder):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 784))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).unflatten(-1, (1, 28, 28))

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=torch.sigmoid(self.logits(z)))


class PyroPair(nn.Module):
    """The encoder and decoder as a Pyro model and amortized guide (the pyro_vae convention)."""

    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def model(self, x, y=None, size=None):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", size, subsample=x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder.logits(z)).to_event(3), obs=x)

    def guide(self, x, y=None, size=None):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", size, subsample=x):
            output = self.encoder(x)
            pyro.sample("z", dist.Normal(output.embedding, (0.5 * output.log_covariance).exp()).to_event(1))


class EpochTimes(TrainingCallback):
    """The wall time of each of Pythae's training epochs."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_epoch_begin(self, training_config, **kwargs) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, training_config, **kwargs) -> None:
        self.seconds.append(time.perf_counter() - self.started)


def train_pythae(train_x: torch.Tensor, args: argparse.Namespace, out: Path) -> tuple[PythaeVAE, list[float]]:
    model = PythaeVAE(
        VAEConfig(input_dim=(1, 28, 28), latent_dim=LATENT, reconstruction_loss="bce"), Encoder(), Decoder()
    )
    config = BaseTrainerConfig(
        output_dir=str(out),
        num_epochs=args.epochs,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        no_cuda=True,
        seed=0,
    )
    times = EpochTimes()
    TrainingPipeline(model=model, training_config=config)(train_data=train_x, callbacks=[times])
    return model, times.seconds


def train_pyro_vae(train_x: torch.Tensor, args: argparse.Namespace, capture: bool) -> tuple[PyroPair, list[float]]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pair = PyroPair(Encoder(), Decoder())
    history = pyro_vae.fit(
        pair.model,
        pair.guide,
        train_x,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        validation=None,
        seed=0,
        progress=None,
        capture=capture,
    )
    return pair, history.seconds


def test_nll(pair: PyroPair, test_x: torch.Tensor, num_samples: int) -> float:
    pair.eval()
    pyro.set_rng_seed(1)
    return (
        -pyro_vae.log_likelihood(pair.model, pair.guide, test_x, num_samples=num_samples, progress=None).mean().item()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-size", type=int, default=60000)
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--num-samples", type=int, default=1000, help="K of the test NLL")
    parser.add_argument("--check-images", type=int, default=100, help="test images scored by Pythae's get_nll too")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_pythae")
    args = parser.parse_args()

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    logging.getLogger("pythae").setLevel(logging.WARNING)
    data = load_dataset("mnist", args.data_dir)
    train_x = (data.train_x[: args.train_size] > 0.5).float()
    test_x = (data.test_x[: args.test_size] > 0.5).float()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(dir=out) as pythae_dir:
        pythae_model, pythae_seconds = train_pythae(train_x, args, Path(pythae_dir))
    runs = {"pythae": (PyroPair(pythae_model.encoder, pythae_model.decoder), pythae_seconds)}
    runs["pyro_vae"] = train_pyro_vae(train_x, args, capture=False)
    runs["captured"] = train_pyro_vae(train_x, args, capture=True)
    # the first epoch of each holds one-off set-up (Pythae's data checks, fit's inspection and recording)
    epoch = {name: statistics.median(seconds[1:] or seconds) for name, (_, seconds) in runs.items()}
    nll = {name: test_nll(pair, test_x, args.num_samples) for name, (pair, _) in runs.items()}
    check = test_x[: args.check_images]
    torch.manual_seed(2)
    with torch.no_grad():
        pythae_own = -pythae_model.eval().get_nll(
            check, n_samples=args.num_samples, batch_size=min(args.num_samples, 1000)
        )
    ours_on_check = test_nll(runs["pythae"][0], check, args.num_samples)

    lines = [
        "# Pythae's TrainingPipeline and pyro_vae.fit on the same MNIST VAE",
        "",
        f"784-{HIDDEN}-{LATENT} MLP encoder and decoder, Bernoulli likelihood, {len(train_x)} binarized training "
        f"images, {args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}, {args.threads} threads. Test NLL: "
        f"pyro_vae.log_likelihood with K = {args.num_samples} on {len(test_x)} test images, for every trained pair.",
        "",
        "| trained by | seconds per epoch (median of epochs 2+) | ratio to Pythae | test NLL (nats) |",
        "| --- | ---: | ---: | ---: |",
    ]
    names = {"pythae": "Pythae TrainingPipeline", "pyro_vae": "pyro_vae.fit", "captured": "pyro_vae.fit(capture=True)"}
    for name, label in names.items():
        lines.append(f"| {label} | {epoch[name]:.2f} | {epoch[name] / epoch['pythae']:.2f} | {nll[name]:.2f} |")
    lines += [
        "",
        f"Cross-check on the first {len(check)} test images, the Pythae-trained pair: Pythae's get_nll "
        f"{pythae_own:.2f}, pyro_vae.log_likelihood {ours_on_check:.2f} nats. "
        f"Wall time {(time.perf_counter() - started) / 60:.1f} min.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(
        f"summary: pythae_epoch_seconds={epoch['pythae']:.2f} fit_epoch_seconds={epoch['pyro_vae']:.2f} "
        f"captured_epoch_seconds={epoch['captured']:.2f} epoch_ratio={epoch['pyro_vae'] / epoch['pythae']:.2f} "
        f"captured_epoch_ratio={epoch['captured'] / epoch['pythae']:.2f} pythae_test_nll={nll['pythae']:.2f} "
        f"fit_test_nll={nll['pyro_vae']:.2f} captured_test_nll={nll['captured']:.2f} "
        f"nll_gap={nll['pyro_vae'] - nll['pythae']:.2f} pythae_own_nll={pythae_own:.2f} "
        f"epochs={args.epochs} num_samples={args.num_samples} minutes={(time.perf_counter() - started) / 60:.1f}"
    )


if __name__ == "__main__":
    main()
