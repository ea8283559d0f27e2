"""Corrections for the known failure of likelihood scores on images.

A deep generative model trained on Fashion-MNIST gives MNIST digits a *higher* likelihood than
its own test data (Nalisnick et al. 2019, "Do deep generative models know what they don't
know?"): simple images with large constant areas are easy to encode whatever the model learnt.
Two published corrections that fit a VAE, each returning a score where higher means more normal:

- :func:`complexity_corrected`: input complexity (Serrà et al. 2020, "Input complexity and
  out-of-distribution detection with likelihood-based generative models"). The length L(x) of
  the image under a lossless compressor (PNG) estimates how easy x is for *any* model; the score
  is log p(x) + L(x), both in nats, i.e. minus Serrà's S(x) = -log p(x) - L(x).
- :func:`likelihood_regret`: likelihood regret (Xiao et al. 2020, "Likelihood regret: an
  out-of-distribution detection score for variational auto-encoder"). For data like the training
  data the amortized guide is already near the best posterior; for other data, fitting the
  variational parameters to x alone gains much more. The regret is ELBO(x; q fitted to x) minus
  ELBO(x; amortized q); the score is minus the regret. Here the per-datum fit optimizes the
  location and scale of q(z | x) directly (Xiao et al. fine-tune the encoder's weights), which
  needs only a guide whose one latent site is a (possibly ``to_event``) Normal.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from PIL import Image
from pyro.infer import Trace_ELBO

from pyro_vae.latent import posterior
from pyro_vae.progress import progress_bar
from pyro_vae.scoring import chunk_shape, elbo

CORRECTIONS = ("none", "complexity", "regret")


def compressed_bits(images: torch.Tensor) -> np.ndarray:
    """PNG length (compression level 9) of each image in bits, after quantizing [0, 1] pixels to
    8 bits; ``images`` is shaped ``[N, channels, height, width]`` with 1 or 3 channels."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images shaped [N, 1 or 3, H, W], got {tuple(images.shape)}")
    pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    lengths = np.empty(len(pixels))
    for index, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, "PNG", compress_level=9)
        lengths[index] = 8 * buffer.tell()
    return lengths


def complexity_corrected(log_px: torch.Tensor | np.ndarray, images: torch.Tensor) -> np.ndarray:
    """log p(x) + L(x) in nats, with L(x) the PNG length of x: higher is more normal."""
    log_px = log_px.detach().cpu().double().numpy() if isinstance(log_px, torch.Tensor) else np.asarray(log_px)
    return log_px + math.log(2) * compressed_bits(images)


def _normal_site(
    guide: Callable, x: torch.Tensor, y: torch.Tensor | None
) -> tuple[str, torch.Tensor, torch.Tensor, int]:
    """The one latent site of the guide, with the location, scale and event dims of its Normal."""
    name, fn = posterior(guide, x, y)
    event_dims = fn.event_dim
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    if not isinstance(fn, dist.Normal):
        raise ValueError(f"likelihood regret needs a Normal guide site; {name!r} is {type(fn).__name__}")
    return name, fn.loc.detach(), fn.scale.detach(), event_dims


def _fitted_guide(name: str, loc: torch.Tensor, log_scale: torch.Tensor, event_dims: int) -> Callable:
    """q(z | x) with free parameters per datum, for the rows the parameters were fitted to (or
    their first rows: scoring traces the first rows once to learn the plate structure)."""

    def guide(x: torch.Tensor, y: torch.Tensor | None = None, size: int | None = None) -> torch.Tensor:
        rows = x.shape[0]
        with pyro.plate("data", size, subsample=x):
            return pyro.sample(name, dist.Normal(loc[:rows], log_scale[:rows].exp()).to_event(event_dims))

    return guide


def likelihood_regret(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    steps: int = 100,
    lr: float = 0.05,
    num_samples: int = 16,
    batch_size: int = 1000,
    progress: bool | None = False,
) -> torch.Tensor:
    """ELBO with q(z | x) fitted to each datum alone, minus the ELBO with the amortized guide,
    in nats, shaped ``[N]`` (Xiao et al. 2020). Both ELBOs average ``num_samples`` particles;
    the fit takes ``steps`` Adam steps (learning rate ``lr``, cosine-annealed to zero) on every
    datum's location and log-scale, started at the amortized guide's. Large regret means novel."""
    regrets = []
    # A block of rows is scored in one chunk, so that the fitted parameters line up with its rows
    # (scoring splits larger blocks, and the fitted guide would give the next chunk the first rows').
    batch_size = min(batch_size, chunk_shape(x, num_samples)[1])
    bar = progress_bar(total=x.shape[0], desc=f"likelihood regret ({steps} steps)", unit="datum", show=progress)
    with bar:
        for start in range(0, x.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            x_rows, y_rows = x[rows], None if y is None else y[rows]
            name, loc, scale, event_dims = _normal_site(guide, x_rows, y_rows)
            loc, log_scale = loc.clone().requires_grad_(), scale.log().clone().requires_grad_()
            fitted = _fitted_guide(name, loc, log_scale, event_dims)
            optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
            # Annealed to zero, so the one-particle gradient noise settles at the optimum.
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
            loss = Trace_ELBO(max_plate_nesting=1)
            for _ in range(steps):
                objective = loss.differentiable_loss(model, fitted, x_rows, y=y_rows, size=x_rows.shape[0])
                # Gradients for q's parameters only: the model's networks stay as trained.
                loc.grad, log_scale.grad = torch.autograd.grad(objective, [loc, log_scale])
                optimizer.step()
                schedule.step()
            amortized = elbo(model, guide, x_rows, y_rows, num_samples=num_samples)
            one_chunk = num_samples * x_rows.shape[0]
            refitted = elbo(model, fitted, x_rows, y_rows, num_samples=num_samples, max_batch=one_chunk)
            regrets.append(refitted - amortized)
            bar.update(x_rows.shape[0])
    return torch.cat(regrets)
