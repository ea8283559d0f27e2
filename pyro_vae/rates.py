"""The rate of each latent site: how many nats of the ELBO's KL term it spends per datum.

The ELBO's KL term splits over the latent sites of a model/guide pair, in the guide's order:

.. math::

    \\mathrm{KL} = \\sum_s \\mathbb E_q\\big[\\log q(z_s \\mid x, z_{<s}) - \\log p(z_s \\mid z_{<s})\\big],

and each term is the information the site carries about the datum (Alemi et al. 2018, "Fixing a
broken ELBO"). A site whose rate is near zero has collapsed onto its prior: the decoder ignores it.
This is the first thing to look at when a deeper model (a hierarchical VAE) does no better than a
shallow one: its lower layers are often unused (Sønderby et al. 2016).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask

from pyro_vae.convention import Convention
from pyro_vae.program import Inspection, data_frame, inspect_pair
from pyro_vae.scoring import INSPECTED_ROWS, PARTICLE_PLATE, per_datum, traces


def latent_rates(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    num_samples: int = 10,
    *,
    convention: Convention | None = None,
) -> dict[str, torch.Tensor]:
    """Per latent site inside the data plate, the Monte-Carlo estimate (``num_samples`` draws) of
    E_q[log q(z_s | ...) - log p(z_s | ...)] for each datum: ``{site: [N]}``, in the guide's order.

    The log-densities are unscaled (no KL weight or minibatch factor enters) and masked (a row a
    site masks out, such as a given label at ``"y_unobserved"``, spends nothing there). The
    particles are vectorized with an outer plate where the program allows, else drawn one at a time.
    """
    first_y = None if y is None else y[:INSPECTED_ROWS]
    inspection = inspect_pair(model, guide, x[:INSPECTED_ROWS], first_y, convention=convention)
    particle_dim = -inspection.plate_nesting - 1
    with torch.no_grad(), poutine.block():
        try:
            with pyro.plate(PARTICLE_PLATE, num_samples, dim=particle_dim):
                return _rates(inspection, x, y, num_samples, particle_dim)
        except (RuntimeError, ValueError, IndexError, TypeError):  # a program without room for particles
            draws = [_rates(inspection, x, y, 1, particle_dim) for _ in range(num_samples)]
            return {name: torch.stack([draw[name] for draw in draws]).mean(0) for name in draws[0]}


def _rates(inspection: Inspection, x: torch.Tensor, y: torch.Tensor | None, particles: int, particle_dim: int):
    model_trace, guide_trace = traces(inspection.model, inspection.guide, x, y)
    shape = (particles, x.shape[0])
    rates = {}
    for name in inspection.local_latents:
        if name not in model_trace.nodes or name not in guide_trace.nodes:
            continue
        terms = []
        for site in (guide_trace.nodes[name], model_trace.nodes[name]):
            frame = data_frame(site, inspection.convention.data_plate)
            log_prob = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])  # masked rows: none
            terms.append(per_datum(log_prob, particle_dim, frame.dim, shape))
        rates[name] = (terms[0] - terms[1]).mean(0)
    return rates
