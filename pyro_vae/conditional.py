"""Class-conditional evidence for models with a label site ``"y"``: log p(x | y) for every class,
log p(x) with the label summed out, a generative classifier, and novelty against a claimed label.

For each class c the label is given to model and guide (``y = c``) and the importance-sampled
estimate of :mod:`pyro_vae.scoring` is computed with the label's own density left out, which is
log p(x | y = c). Then

.. math::

    \\log p(x) = \\operatorname{logsumexp}_c [\\log p(y = c) + \\log p(x \\mid y = c)], \\qquad
    p(y = c \\mid x) = \\exp[\\log p(y = c) + \\log p(x \\mid y = c) - \\log p(x)].

The model must observe the label at a site named ``"y"`` inside the ``"data"`` plate, as
:class:`pyro_vae.models.ConditionalVAE` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from pyro_vae.scoring import DEFAULT_MAX_BATCH, log_likelihood

LABEL_SITE = "y"


class _LeaveOut(Messenger):
    """Mask the density of the named sites to zero: what remains is conditional on them."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names

    def _process_message(self, msg: dict) -> None:
        if msg["name"] in self.names:
            msg["mask"] = False


def given_labels(model: Callable) -> Callable:
    """The model's density of everything but the label: scores of it are log p(x | y)."""

    def conditioned(*args, **kwargs):
        with _LeaveOut({LABEL_SITE}):
            return model(*args, **kwargs)

    return conditioned


def label_log_prior(model: Callable, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log p(y = c) for every class, read off the model's label site, shaped ``[num_classes]``."""
    labels = torch.arange(num_classes, device=x.device)
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(x[:1].expand(num_classes, *x.shape[1:]), y=labels, size=num_classes)
    site = trace.nodes.get(LABEL_SITE)
    if site is None or not site["is_observed"]:
        raise ValueError(f"the model has no observed label site named {LABEL_SITE!r}")
    return site["fn"].log_prob(labels)


@dataclass
class ClassScores:
    """Per-datum, per-class evidence. ``log_px_given_y`` is ``[N, C]``, ``log_prior`` ``[C]``."""

    log_px_given_y: torch.Tensor
    log_prior: torch.Tensor

    @property
    def log_joint(self) -> torch.Tensor:
        """log p(x, y = c), ``[N, C]``."""
        return self.log_px_given_y + self.log_prior

    @property
    def log_px(self) -> torch.Tensor:
        """log p(x) with the label summed out, ``[N]``."""
        return self.log_joint.logsumexp(-1)

    @property
    def posterior(self) -> torch.Tensor:
        """p(y = c | x) under the model, ``[N, C]``."""
        return (self.log_joint - self.log_px.unsqueeze(-1)).exp()

    def predict(self) -> torch.Tensor:
        """The generative classifier: argmax_c p(y = c | x)."""
        return self.log_joint.argmax(-1)

    def claimed(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For a claimed label per datum: log p(x | y_claimed) (low: this does not look like
        that class) and p(y_claimed | x) (low: another class explains it better)."""
        index = labels.long().unsqueeze(-1)
        return self.log_px_given_y.gather(-1, index).squeeze(-1), self.posterior.gather(-1, index).squeeze(-1)


def class_scores(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_classes: int,
    num_samples: int = 100,
    max_batch: int = DEFAULT_MAX_BATCH,
    progress: bool | None = False,
) -> ClassScores:
    """Importance-sampled log p(x | y = c) of every datum for every class (K = ``num_samples``
    per class), with the label prior, as :class:`ClassScores`."""
    conditioned = given_labels(model)
    columns = [
        log_likelihood(
            conditioned,
            guide,
            x,
            torch.full((x.shape[0],), label, dtype=torch.long, device=x.device),
            num_samples,
            max_batch,
            progress,
        )
        for label in range(num_classes)
    ]
    return ClassScores(torch.stack(columns, dim=-1), label_log_prior(model, x, num_classes))
