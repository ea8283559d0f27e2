"""The names a Pyro program shares with pyro_vae, in one place.

A model p(z) p(x | z) and its amortized guide q(z | x) are called as ``model(x, y, size=N)`` (each
argument only where the program's signature takes it: see :mod:`pyro_vae.program`). Their
per-datum sample sites live inside the plate :attr:`Convention.data_plate`, the model observes the
data at :attr:`Convention.observed_site` and, for labelled data, the label at
:attr:`Convention.label_site`. Sites outside the data plate are global (a learned noise scale, a
Bayesian weight): they are trained with the ELBO scaled as SVI scales it and held fixed when data
are scored.

A program that uses other names says so with a :class:`Convention`::

    fit(model, guide, x, convention=Convention(observed_site="obs"))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DATA_PLATE = "data"
OBSERVED_SITE = "x"
LABEL_SITE = "y"
MISSING_LABEL = -1  # marks an unlabelled datum in an integer label tensor (a NaN row in a one-hot one)


@dataclass(frozen=True)
class Convention:
    """The names of the data plate, the observed data site and the label site.

    :param str data_plate: the ``pyro.plate`` that holds every per-datum sample site.
    :param observed_site: the model's sample site that observes ``x``; ``None`` (the default)
        takes ``"x"``, or else the model's one observed site other than the label.
    :param str label_site: the sample site of the label ``y`` in conditional models.
    """

    data_plate: str = DATA_PLATE
    observed_site: str | None = None
    label_site: str = LABEL_SITE


DEFAULT = Convention()


def missing_labels(y: torch.Tensor) -> torch.Tensor:
    """Which data have no label, ``[N]``: :data:`MISSING_LABEL` in an integer label tensor, a
    row holding a NaN in a floating-point (one-hot) one."""
    if y.is_floating_point():
        return torch.isnan(y.reshape(y.shape[0], -1)).any(-1)
    return (y == MISSING_LABEL).reshape(y.shape[0], -1).any(-1)
