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

from pyro_vae.convention import Convention
from pyro_vae.program import data_frame, inspect_pair
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

    The log-densities are unscaled (no KL weight or minibatch factor enters). The particles are
    vectorized with an outer plate; the pair must allow the extra dimension.
    """
    first_y = None if y is None else y[:INSPECTED_ROWS]
    inspection = inspect_pair(model, guide, x[:INSPECTED_ROWS], first_y, convention=convention)
    particle_dim = -inspection.plate_nesting - 1
    shape = (num_samples, x.shape[0])
    with torch.no_grad(), poutine.block(), pyro.plate(PARTICLE_PLATE, num_samples, dim=particle_dim):
        model_trace, guide_trace = traces(inspection.model, inspection.guide, x, y)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    rates = {}
    for name in inspection.local_latents:
        if name not in model_trace.nodes:
            continue
        terms = []
        for site in (guide_trace.nodes[name], model_trace.nodes[name]):
            frame = data_frame(site, inspection.convention.data_plate)
            terms.append(per_datum(site["unscaled_log_prob"], particle_dim, frame.dim, shape))
        rates[name] = (terms[0] - terms[1]).mean(0)
    return rates
