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
to use. With λ = 0 it is the ELBO. A β or warm-up weight on the latent sites
(:mod:`pyro_vae.kl_weight`) scales the floor with the term, β max(λ, KL_s).

The floor is per site, not per dimension: split a latent into several sites for a finer one.
"""

from __future__ import annotations

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.util import torch_item
from pyro.poutine.trace_struct import Trace


class FreeBitsELBO(Trace_ELBO):
    """``Trace_ELBO`` with each latent site's KL term floored at ``free_bits`` nats per datum.

    The guide's latent sites must be reparameterizable (the pathwise gradient); a latent site of
    the model that the guide does not sample, and a site of the guide that the model lacks, enter
    unfloored, as in ``Trace_ELBO``.

    :param float free_bits: λ, nats per datum and latent site (≥ 0).
    :param kwargs: passed to :class:`pyro.infer.Trace_ELBO` (``num_particles``, ...).
    """

    def __init__(self, free_bits: float, **kwargs) -> None:
        if not free_bits >= 0:
            raise ValueError(f"free_bits must be a number of nats ≥ 0, got {free_bits}")
        super().__init__(**kwargs)
        self.free_bits = free_bits

    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace) -> tuple[float, torch.Tensor]:
        latent = {name for name, site in guide_trace.nodes.items() if site["type"] == "sample"}
        objective = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and name not in latent:
                objective = objective + site["log_prob_sum"]
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if not site["fn"].has_rsample:
                raise ValueError(
                    f"free bits need a reparameterizable guide, and site {name!r} ({type(site['fn']).__name__}) has "
                    "no rsample; train with free_bits=0"
                )
            prior = model_trace.nodes.get(name)
            if prior is None or prior["type"] != "sample":
                objective = objective - site["log_prob_sum"]
                continue
            kl = site["log_prob_sum"] - prior["log_prob_sum"]
            objective = objective - torch.maximum(kl, self.free_bits * _data_weight(site))
        return -torch_item(objective), -objective

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative free-bits objective, averaged over the particles (no gradients)."""
        with torch.no_grad():
            particles = self._get_traces(model, guide, args, kwargs)
            return sum(self._differentiable_loss_particle(*traces)[0] for traces in particles) / self.num_particles


def _data_weight(site: dict) -> torch.Tensor:
    """How many data a site's summed term stands for: its batch elements, each counted with the
    site's scale (the minibatch factor N/B, a KL weight) and mask."""
    ones = torch.ones_like(site["unscaled_log_prob"])
    return scale_and_mask(ones, site["scale"], site["mask"]).sum()
