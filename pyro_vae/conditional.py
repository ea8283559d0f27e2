"""Class-conditional evidence for models with a label site ``"y"``: log p(x | y) for every class,
log p(x) with the label summed out, a generative classifier, and novelty against a claimed label.

For each class c the label is given to model and guide (``y = c``) and the importance-sampled
estimate of :mod:`pyro_vae.scoring` is computed with the label's own density left out, which is
log p(x | y = c). Then

.. math::

    \\log p(x) = \\operatorname{logsumexp}_c [\\log p(y = c) + \\log p(x \\mid y = c)], \\qquad
    p(y = c \\mid x) = \\exp[\\log p(y = c) + \\log p(x \\mid y = c) - \\log p(x)].

The model must have a label site (``"y"``, or :attr:`~pyro_vae.convention.Convention.label_site`)
inside the data plate, as :class:`pyro_vae.models.ConditionalVAE` and Pyro's M2 example do; the
labels are given to it in the encoding its label prior uses: class indices for a ``Categorical``,
one-hot rows for a ``OneHotCategorical`` (read off the prior once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from pyro_vae.convention import DEFAULT, Convention
from pyro_vae.program import bind
from pyro_vae.scoring import DEFAULT_MAX_BATCH, log_likelihood


class _LeaveOut(Messenger):
    """Mask the density of the named sites to zero: what remains is conditional on them."""

    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names

    def _process_message(self, msg: dict) -> None:
        if msg["name"] in self.names:
            msg["mask"] = False


def given_labels(model: Callable, label_site: str = DEFAULT.label_site) -> Callable:
    """The model's density of everything but the label: scores of it are log p(x | y)."""
    bound = bind(model)

    def conditioned(x, y=None, size=None):
        with _LeaveOut({label_site}):
            return bound(x, y, size=size)

    return conditioned


@dataclass(frozen=True)
class LabelPrior:
    """The model's prior over labels, read off its label site: ``log_prior`` is log p(y = c),
    ``[C]``; ``one_hot`` says whether the model takes labels as one-hot rows."""

    log_prior: torch.Tensor
    one_hot: bool

    def labels(self, label: int, rows: int, x: torch.Tensor) -> torch.Tensor:
        """``rows`` copies of the class ``label`` in the model's encoding."""
        if not self.one_hot:
            return torch.full((rows,), label, dtype=torch.long, device=x.device)
        row = torch.zeros(len(self.log_prior), dtype=x.dtype, device=x.device)
        row[label] = 1.0
        return row.expand(rows, -1)


def label_prior(model: Callable, x: torch.Tensor, num_classes: int, label_site: str = DEFAULT.label_site) -> LabelPrior:
    """The model's label prior, from one trace of the model on a datum with its label unknown."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(bind(model)).get_trace(x[:1], None, size=1)
    site = trace.nodes.get(label_site)
    if site is None or site["type"] != "sample":
        raise ValueError(f"the model has no label site named {label_site!r}")
    fn = site["fn"]
    one_hot = fn.event_dim == 1
    values = (
        torch.eye(num_classes, dtype=x.dtype, device=x.device)
        if one_hot
        else torch.arange(num_classes, device=x.device)
    )
    return LabelPrior(fn.log_prob(values).reshape(num_classes), one_hot)


def label_log_prior(model: Callable, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log p(y = c) for every class, read off the model's label site, shaped ``[num_classes]``."""
    return label_prior(model, x, num_classes).log_prior


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
    *,
    convention: Convention | None = None,
) -> ClassScores:
    """Importance-sampled log p(x | y = c) of every datum for every class (K = ``num_samples``
    per class), with the label prior, as :class:`ClassScores`."""
    convention = convention or DEFAULT
    prior = label_prior(model, x, num_classes, convention.label_site)
    conditioned = given_labels(model, convention.label_site)
    columns = [
        log_likelihood(
            conditioned,
            guide,
            x,
            prior.labels(label, x.shape[0], x),
            num_samples,
            max_batch,
            progress,
            convention=convention,
        )
        for label in range(num_classes)
    ]
    return ClassScores(torch.stack(columns, dim=-1), prior.log_prior)
