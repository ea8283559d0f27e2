"""What the latent-space experiments share: MNIST loading and a stock VAE trained in one call."""

from __future__ import annotations

import pyro
import torch

import pyro_vae
from pyro_vae.data import DataSplits, load_dataset
from pyro_vae.guides import AmortizedDelta, AmortizedNormal
from pyro_vae.models import VAE


def binarized_mnist(data_dir: str) -> DataSplits:
    """MNIST with pixels binarized at 0.5 (labels kept)."""
    data = load_dataset("mnist", data_dir)
    data.train_x, data.test_x = (data.train_x > 0.5).float(), (data.test_x > 0.5).float()
    return data


def train_vae(
    x: torch.Tensor,
    latent_dim: int,
    epochs: int,
    likelihood: str = "bernoulli",
    hidden: tuple[int, ...] = (512, 256),
    guide: str = "normal",
    beta: float = 1.0,
    seed: int = 0,
) -> tuple[VAE, AmortizedNormal | AmortizedDelta]:
    """A stock MLP VAE (or, with ``guide="delta"``, autoencoder) fitted to ``x``."""
    pyro.set_rng_seed(seed)
    model = VAE.build(x.shape[1:], latent_dim, hidden, "mlp", likelihood)
    kind = AmortizedNormal if guide == "normal" else AmortizedDelta
    amortized = kind.build(x.shape[1:], latent_dim, hidden, "mlp")
    pyro_vae.fit(model, amortized, x, epochs=epochs, beta=beta, validation=None, seed=seed, progress=None)
    return model.eval(), amortized.eval()
