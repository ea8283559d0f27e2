"""The minimax game that trains a GAN's generator and discriminator (:mod:`pyro_vae.gan`).

The discriminator D minimizes the cross-entropy of telling data from samples,
``-log σ(D(x)) - log(1 - σ(D(g(z))))``; the generator g is trained with the non-saturating loss
``-log σ(D(g(z)))`` (Goodfellow et al. 2014, section 3), which keeps its gradient alive early in
training, when D rejects every sample with confidence and ``log(1 - σ(D(g(z))))`` is flat.
Stabilizers, as DCGAN (Radford et al. 2016) found necessary: Adam with learning rate 2e-4 and
β₁ = 0.5, and one-sided label smoothing (Salimans et al. 2016): the discriminator's targets for
data are ``1 - label_smoothing``, never those for samples. A PatchGAN discriminator's logits
(one per patch) are averaged like a batch of independent judgements.

:func:`fit_gan` alternates one discriminator step and one generator step per minibatch and
returns a :class:`GANHistory`. It draws from torch's global generator, which ``seed`` seeds first
(as :func:`pyro_vae.fit` does). After every epoch it can hand a :class:`GANState` (both
optimizers' states, the history and the random-number states; tensors and plain values only) to a
callback; passed back as ``resume=``, with the networks' weights of that epoch loaded, training
continues as if it had never stopped (the same draws and minibatches, bit for bit on CPU).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits

from pyro_vae.device import resolve_device
from pyro_vae.gan import Discriminator, Generator
from pyro_vae.progress import progress_bar
from pyro_vae.resume import rng_state, set_rng_state


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, label_smoothing: float = 0.0):
    """The discriminator's cross-entropy, data labelled ``1 - label_smoothing`` and samples 0."""
    real = binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, 1.0 - label_smoothing))
    return real + binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The non-saturating generator loss, ``-log σ(D(g(z)))`` averaged."""
    return binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


@dataclass
class GANHistory:
    """Per epoch: the mean losses of both players and the wall time."""

    epoch: list[int] = field(default_factory=list)
    discriminator_loss: list[float] = field(default_factory=list)
    generator_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


@dataclass
class GANState:
    """What :func:`fit_gan` needs, besides the networks' weights, to continue after ``epoch``."""

    epoch: int
    history: dict
    generator_optimizer: dict
    discriminator_optimizer: dict
    rng: dict

    def to_dict(self) -> dict:
        """Tensors and plain values only (safe for ``weights_only`` loading)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict) -> GANState:
        return cls(**state)


def _data(data: torch.Tensor | tuple[torch.Tensor, torch.Tensor], conditional: bool):
    x, y = data if isinstance(data, tuple) else (data, None)
    if conditional and y is None:
        raise ValueError("a class-conditional GAN trains on (x, y) pairs: pass the labels too")
    if not conditional and y is not None:
        raise ValueError("this GAN is not class-conditional: pass x alone, or build it with num_classes")
    if not torch.isfinite(x).all():
        raise ValueError("the training data hold NaN or infinite values")
    return x, y


def fit_gan(
    generator: Generator,
    discriminator: Discriminator,
    data: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    label_smoothing: float = 0.1,
    device: str = "cpu",
    seed: int | None = None,
    progress: bool | None = None,
    on_epoch_end: Callable[[GANState], None] | None = None,
    resume: GANState | None = None,
) -> GANHistory:
    """Train ``generator`` and ``discriminator`` by the non-saturating game on ``data`` (samples
    ``x``, or ``(x, y)`` with class labels for conditional networks); returns the
    :class:`GANHistory`. ``seed`` seeds torch's generator first (``None``: draws from it as it is);
    ``on_epoch_end(state)`` is called with the :class:`GANState` after every epoch (to save a
    checkpoint, say); ``resume``, such a state, continues after its epoch (load the networks'
    weights of that epoch first)."""
    conditional = generator.labels is not None
    if (discriminator.labels is not None) != conditional:
        raise ValueError("the generator and the discriminator must both be class-conditional, or neither")
    x, y = _data(data, conditional)
    device = resolve_device(device)
    generator.to(device), discriminator.to(device)
    x, y = x.to(device), None if y is None else y.to(device)
    if seed is not None:
        torch.manual_seed(seed)
    g_optim = torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
    d_optim = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    history, first_epoch = GANHistory(), 1
    if resume is not None:
        g_optim.load_state_dict(resume.generator_optimizer)
        d_optim.load_state_dict(resume.discriminator_optimizer)
        history, first_epoch = GANHistory(**resume.history), resume.epoch + 1
        set_rng_state(resume.rng)
    bar = progress_bar(total=epochs, initial=first_epoch - 1, desc="GAN", unit="epoch", show=progress)
    with bar:
        for epoch in range(first_epoch, epochs + 1):
            started, d_total, g_total, steps = time.perf_counter(), 0.0, 0.0, 0
            for index in torch.randperm(len(x), device=device).split(batch_size):
                real, labels = x[index], None if y is None else y[index]
                z = torch.randn(len(index), generator.latent_dim, device=device, dtype=real.dtype)
                fake = generator(z, labels)
                d_loss = discriminator_loss(
                    discriminator(real, labels), discriminator(fake.detach(), labels), label_smoothing
                )
                _step(d_optim, d_loss)
                g_loss = generator_loss(discriminator(fake, labels))
                _step(g_optim, g_loss, discriminator)
                d_total, g_total, steps = d_total + d_loss.item(), g_total + g_loss.item(), steps + 1
            history.epoch.append(epoch)
            history.discriminator_loss.append(d_total / steps)
            history.generator_loss.append(g_total / steps)
            history.seconds.append(time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(d_loss=f"{d_total / steps:.3f}", g_loss=f"{g_total / steps:.3f}")
            if on_epoch_end is not None:
                optimizers = copy.deepcopy((g_optim.state_dict(), d_optim.state_dict()))  # not the live moments
                on_epoch_end(GANState(epoch, asdict(history), *optimizers, rng_state()))
    return history


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, frozen: nn.Module | None = None) -> None:
    """One optimizer step on ``loss``; the gradients it leaves on ``frozen`` (the discriminator,
    during the generator's step) are cleared, so they never reach that module's own step."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if frozen is not None:
        frozen.zero_grad(set_to_none=True)
