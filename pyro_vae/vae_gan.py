"""VAE-GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric"):
a VAE whose decoder is also a GAN's generator.

:class:`AdversarialTerm` is an ``extra_loss`` for :func:`pyro_vae.fit`: any model/guide pair that
follows the convention keeps its ELBO, which ``fit`` trains and reports and every score reads,
and gains the generator's half of a GAN game played against a discriminator (a PatchGAN's, say:
:class:`pyro_vae.gan.Discriminator` with ``arch="patch"``). On every training minibatch ``x`` it

1. decodes the guide's draw of every datum (reconstructions, the model replaying the guide) and
   the model's own draw from its prior (samples, the model run on ``x`` without the guide), and
   takes the mean of the data site of each: ``x̃ = E[x | z ~ q(z | x)]``, ``x_p = E[x | z ~ p(z)]``
   (with ``compare="draw"``, a draw of the data site instead: reparameterized where the
   distribution allows, else with the straight-through gradient of the mean (Bengio et al.
   2013), as binarized data need: a discriminator shown binary data beside grey means tells them
   apart by their grey levels alone);
2. takes one step of the discriminator, with its own Adam optimizer, on telling ``x`` from
   ``x̃`` and ``x_p`` (the cross-entropy of :func:`~pyro_vae.adversarial.discriminator_loss`);
3. returns ``weight`` times the non-saturating generator loss of ``x̃`` and ``x_p``
   (:func:`~pyro_vae.adversarial.generator_loss`), per datum, whose gradient ``fit`` adds to the
   ELBO's for the pair's parameters only (the discriminator is never stepped by ``fit``).

Both means are differentiable in the pair's parameters (the guide's draw is reparameterized), so
the adversarial gradient reaches the decoder through both and the encoder through ``x̃``. This
departs from Larsen et al.'s Algorithm 1, which keeps the GAN loss from the encoder: ``fit`` adds
one loss for all of the pair's parameters. Unlike their model, the pixel likelihood stays, so the
ELBO and log p(x) remain those of the VAE. The discriminator's losses are kept per step
(:attr:`AdversarialTerm.discriminator_losses`, :attr:`~AdversarialTerm.generator_losses`); its
parameters and optimizer state are the caller's to save (``state_dict``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro import poutine
from torch import nn

from pyro_vae.adversarial import discriminator_loss, generator_loss
from pyro_vae.convention import DEFAULT, Convention
from pyro_vae.latent import batch_first
from pyro_vae.program import bind, observed_site

COMPARED = ("mean", "draw")


def _draw(distribution: torch.distributions.Distribution) -> torch.Tensor:
    """A draw that carries a gradient: reparameterized, else straight through the mean."""
    if distribution.has_rsample:
        return distribution.rsample()
    mean = distribution.mean
    return distribution.sample() + (mean - mean.detach())  # the draw exactly: the bracket is 0


class AdversarialTerm:
    """The VAE-GAN's extra loss for ``fit(model, guide, data, extra_loss=...)``.

    :param model: the Pyro model whose data site's mean is the generator's output.
    :param guide: its amortized guide.
    :param discriminator: ``discriminator(x)`` (or ``discriminator(x, y)`` for one built with
        labels) returns logits: one per datum, or one per patch.
    :param float weight: the adversarial term's weight against the ELBO's per datum.
    :param float lr: the discriminator's learning rate (Adam with β = ``betas``, as DCGAN).
    :param float label_smoothing: one-sided label smoothing of the discriminator's data targets.
    :param str compare: ``"mean"`` (the mean of p(x | z)) or ``"draw"`` (a draw of it) is what
        the discriminator sees beside the data.
    :param convention: the program's names, if not ``"data"``, ``"x"`` and ``"y"``.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        discriminator: nn.Module,
        *,
        weight: float = 1.0,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        label_smoothing: float = 0.1,
        compare: str = "mean",
        convention: Convention | None = None,
    ) -> None:
        if not weight >= 0:
            raise ValueError(f"weight must be a number >= 0, got {weight}")
        if compare not in COMPARED:
            raise ValueError(f"compare must be one of {COMPARED}, got {compare!r}")
        self.compare = compare
        self.convention = convention or DEFAULT
        self.model = bind(model, self.convention.data_plate)
        self.guide = bind(guide, self.convention.data_plate)
        self.discriminator = discriminator
        self.weight, self.label_smoothing = weight, label_smoothing
        self.optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
        self.discriminator_losses: list[float] = []
        self.generator_losses: list[float] = []
        self._data_site: str | None = None  # found on the first minibatch, then reused

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """One discriminator step on the minibatch; the generator's loss per datum, weighted."""
        self.discriminator.to(x.device)
        labels = y if getattr(self.discriminator, "labels", None) is not None else None
        fakes = torch.cat([self.reconstructions(x, y), self.samples(x, y)])
        fake_labels = None if labels is None else torch.cat([labels, labels])
        d_loss = discriminator_loss(
            self.discriminator(*self._inputs(x, labels)),
            self.discriminator(*self._inputs(fakes.detach(), fake_labels)),
            self.label_smoothing,
        )
        self.optimizer.zero_grad()
        d_loss.backward()
        self.optimizer.step()
        g_loss = generator_loss(self.discriminator(*self._inputs(fakes, fake_labels)))
        for parameter in self.discriminator.parameters():  # the generator's gradient is not the discriminator's
            parameter.grad = None
        self.discriminator_losses.append(d_loss.item())
        self.generator_losses.append(g_loss.item())
        return self.weight * g_loss

    def reconstructions(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``E[x | z]`` (or a draw of x) at the guide's draw ``z ~ q(z | x)`` for every datum, differentiable."""
        with poutine.block():
            guide_trace = poutine.trace(self.guide).get_trace(x, y, size=len(x))
            model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(x, y, size=len(x))
        return self._mean(model_trace, x)

    def samples(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``E[x | z]`` (or a draw of x) at the model's own draws ``z ~ p(z)``, one per datum of
        ``x``, differentiable."""
        with poutine.block():
            model_trace = poutine.trace(self.model).get_trace(x, y, size=len(x))
        return self._mean(model_trace, x)

    def _mean(self, model_trace: poutine.Trace, x: torch.Tensor) -> torch.Tensor:
        if self._data_site is None:
            self._data_site = observed_site(model_trace, self.convention)
        site = model_trace.nodes[self._data_site]
        value = _draw(site["fn"]) if self.compare == "draw" else site["fn"].mean
        return batch_first(value, site, self.convention.data_plate).reshape(x.shape)

    @staticmethod
    def _inputs(x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        return (x,) if labels is None else (x, labels)
