"""Auxiliary terms: sites that train but never enter a score.

Some objectives add a term to the ELBO that is not part of the model's density, such as the
classification term α log q(y | x) on labelled data of Kingma et al. (2014), "Semi-Supervised
Learning with Deep Generative Models" (M2). Pyro marks such sites with
``infer={"is_auxiliary": True}``; the pyro_vae ELBOs train on them as on any other site, and the
scores (:mod:`pyro_vae.scoring`) leave them out. :func:`auxiliary` marks every site of a block of
code, so a program written for a separate SVI (Pyro's ``model_classify``) joins the model as it
is::

    def model(xs, ys=None):
        ss_vae.model(xs, ys)
        if ys is not None:
            with pyro_vae.auxiliary():
                ss_vae.model_classify(xs, ys)
"""

from __future__ import annotations

from pyro.poutine.messenger import Messenger


class AuxiliaryMessenger(Messenger):
    """Mark every sample site inside it ``infer={"is_auxiliary": True}``."""

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample":
            msg["infer"] = {**msg["infer"], "is_auxiliary": True}


def auxiliary() -> AuxiliaryMessenger:
    """A context (or decorator) whose sample sites are auxiliary terms: trained, never scored."""
    return AuxiliaryMessenger()
