"""The ELBO with free bits (Kingma et al. 2016, "Improved variational inference with inverse
autoregressive flow", NeurIPS, Appendix C): every latent site's KL term is held at no less than
λ nats per datum,

.. math::

    \\mathcal L_\\lambda = \\mathbb E_q[\\log p(x \\mid z)]
        - \\sum_{\\text{sites } s} \\max\\big(\\lambda, \\mathrm{KL}_s\\big),

with :math:`\\mathrm{KL}_s` the Monte-Carlo KL term of one latent site, log q(z_s | ...) - log p(z_s
| ...), averaged over the data of the minibatch (its scaled sum divided by the number of data it
stands for: N under the data plate's minibatch scaling). Below λ a site's term is constant, so the
optimizer gains nothing by closing it further: a site that would collapse onto its prior (the
lower layers of a hierarchical VAE; Sønderby et al. 2016) keeps λ nats that the decoder can learn
to use. A β or warm-up weight on the latent sites (:mod:`pyro_vae.kl_weight`) scales the floor
with the term, β max(λ, KL_s).

The floor is per site and datum, whatever plates or event dimensions the site has inside the data
plate: split a latent into several sites for a finer one. Sites outside the data plate (global
latents) enter unfloored, as do a model latent that the guide does not sample and a guide site
that the model lacks; each particle is floored on its own.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.util import torch_item
from pyro.poutine.trace_struct import Trace

from pyro_vae.program import data_frame


class FreeBitsELBO(Trace_ELBO):
    """``Trace_ELBO`` with each latent site's KL term floored at ``free_bits`` nats per datum.

    The guide's latent sites must be reparameterizable (the pathwise gradient) and not point
    masses (a ``Delta`` has no KL term to floor).

    :param float free_bits: λ > 0, nats per datum and latent site.
    :param str data_plate: the name of the plate over data (the pyro_vae convention: ``"data"``).
    :param kwargs: passed to :class:`pyro.infer.Trace_ELBO` (``num_particles``, ...), except
        ``vectorize_particles``: a vectorized pass would floor the particles' mean, not each.
    """

    def __init__(self, free_bits: float, data_plate: str = "data", **kwargs) -> None:
        if not 0 < free_bits < float("inf"):
            raise ValueError(
                f"free_bits must be a finite number of nats > 0 (for none use Trace_ELBO), got {free_bits}"
            )
        if kwargs.get("vectorize_particles"):
            raise ValueError("free bits floor each particle's KL terms; use vectorize_particles=False")
        super().__init__(**kwargs)
        self.free_bits = free_bits
        self.data_plate = data_plate

    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace) -> tuple[float, torch.Tensor]:
        latent = {name for name, site in guide_trace.nodes.items() if site["type"] == "sample"}
        objective = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and name not in latent:
                objective = objective + site["log_prob_sum"]
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            check_floorable(site)
            prior = model_trace.nodes.get(name)
            if prior is None or prior["type"] != "sample":  # a guide-only site
                objective = objective - site["log_prob_sum"]
                continue
            kl = site["log_prob_sum"] - prior["log_prob_sum"]
            frame = data_frame(site, self.data_plate)
            if frame is None:  # a global latent
                objective = objective - kl
                continue
            objective = objective - torch.maximum(kl, self.free_bits * _data_count(site, frame.dim))
        return -torch_item(objective), -objective

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative free-bits objective, averaged over the particles (no gradients)."""
        with torch.no_grad():
            particles = self._get_traces(model, guide, args, kwargs)
            return sum(self._differentiable_loss_particle(*traces)[0] for traces in particles) / self.num_particles


def check_floorable(site: dict) -> None:
    """Refuse a guide site whose KL term free bits cannot floor: no reparameterized sampler, or
    a point mass."""
    fn = site["fn"]
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution)):
        fn = fn.base_dist
    if isinstance(fn, dist.Delta):
        raise ValueError(
            f"free bits floor KL terms, and the guide's site {site['name']!r} is a point mass (Delta) with none; "
            "use a guide with a density (e.g. the Normal guide) or train with free_bits=0"
        )
    if not site["fn"].has_rsample:
        raise ValueError(
            f"free bits need a reparameterizable guide, and site {site['name']!r} ({type(site['fn']).__name__}) has "
            "no rsample; train with free_bits=0"
        )


def _data_count(site: dict, data_dim: int) -> torch.Tensor:
    """How many data a site's summed term stands for: its rows along the data plate (a row counts
    where any of its elements is unmasked), each weighted by the site's scale (the minibatch
    factor N/B, a KL weight)."""
    weights = scale_and_mask(torch.ones_like(site["unscaled_log_prob"]), site["scale"], site["mask"])
    rows = weights.movedim(data_dim, -1).flatten(0, -2).amax(0) if weights.dim() > 1 else weights
    return rows.sum()
