"""Training any model/guide pair with stochastic variational inference.

:func:`fit` runs :class:`pyro.infer.SVI` over minibatches. It calls
``model(x, y=y, size=N)`` and ``guide(x, y=y, size=N)`` with ``N`` the number of training data, so
the ``pyro.plate("data", size, subsample=x)`` inside them scales each minibatch's log-densities by
``N / len(x)`` and every step estimates the ELBO of the whole training set (Hoffman et al. 2013,
"Stochastic Variational Inference"). Dividing by ``N`` gives the ELBO per datum in nats.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from torch.utils.data import DataLoader, Dataset

from pyro_vae import distributed as parallel
from pyro_vae.convention import DEFAULT, Convention, missing_labels
from pyro_vae.device import resolve_device
from pyro_vae.fast_svi import FastSVI
from pyro_vae.free_bits import FreeBitsELBO, check_floorable
from pyro_vae.importance_weighted import DoublyReparameterizedELBO, ImportanceWeightedELBO
from pyro_vae.kl_weight import KLWeightMessenger, kl_weighted, linear_warmup
from pyro_vae.optim import JointOptim, make_optimizer
from pyro_vae.program import Inspection, bind, inspect_pair, latent_sites, owning_modules
from pyro_vae.progress import progress_bar
from pyro_vae.resume import TrainingState, rng_state, set_rng_state
from pyro_vae.scoring import DEFAULT_MAX_BATCH, INSPECTED_ROWS, _Scorer, particle_logsumexp
from pyro_vae.validation import check_data

AUTO = "auto"
LABEL_BATCHES = ("mixed", "pure")
Stepper = SVI | FastSVI
LOSSES: dict[str, type] = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "jit": JitTrace_ELBO,
    "enum": TraceEnum_ELBO,
    "iwae": ImportanceWeightedELBO,
    "dreg": DoublyReparameterizedELBO,
}
MAX_ROLLBACKS = 3
DIVERGENCE_FACTOR = 100.0
REMEDIES = "lower the learning rate (lr), clip the gradients (clip_norm) or warm up the KL term (warmup_epochs)"
ROLLBACK_OPTION = "or let fit roll back and go on with on_nonfinite='rollback' (pyro-vae train --on-nonfinite rollback)"
ROLLBACK_LR_FACTOR = 0.5
COLUMNS = ("epoch", "train_elbo", "val_elbo", "kl_weight", "seconds")

Data = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Dataset


@dataclass
class History:
    """What :func:`fit` did, one entry per epoch. ELBOs are per datum, in nats; ``train_elbo`` is
    the minibatch average of the β-weighted training objective, ``val_elbo`` the plain ELBO
    (β = 1) of the validation data, or NaN without validation data. ``objective`` and
    ``validation_objective`` say what the two columns hold: with an importance-weighted loss
    both hold its K-draw bound, with free bits the training column holds the floored objective
    (the columns keep their names, so that a history reads the same whatever trained it)."""

    epoch: list[int] = field(default_factory=list)
    train_elbo: list[float] = field(default_factory=list)
    val_elbo: list[float] = field(default_factory=list)
    kl_weight: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    rollbacks: int = 0
    estimator: str | None = None  # the ELBO that trained the pair at the end: "FastSVI", "Trace_ELBO", ...
    objective: str = "ELBO"  # what train_elbo holds: "ELBO", "IWAE bound (K = 5)", "ELBO with free bits (λ = 2)"
    validation_objective: str = "ELBO"  # what val_elbo holds: "ELBO" or "IWAE bound (K = 5)"

    def append(self, epoch: int, train_elbo: float, val_elbo: float, kl_weight: float, seconds: float) -> None:
        self.epoch.append(epoch)
        self.train_elbo.append(train_elbo)
        self.val_elbo.append(val_elbo)
        self.kl_weight.append(kl_weight)
        self.seconds.append(seconds)

    @property
    def wall_time(self) -> float:
        return sum(self.seconds)

    def rows(self) -> Iterator[dict]:
        for values in zip(self.epoch, self.train_elbo, self.val_elbo, self.kl_weight, self.seconds, strict=True):
            yield dict(zip(COLUMNS, values, strict=True))

    def to_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows())


def split_data(data: Data, validation: float | Data | None, seed: int) -> tuple[Data, Data | None]:
    """Hold out a fraction ``validation`` of ``data`` (chosen with ``seed``), or pass explicit
    validation data through."""
    if validation is None:
        return data, None
    if not isinstance(validation, (int, float)):
        return data, validation
    if validation == 0:
        return data, None
    if not 0 < validation < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {validation}")
    n = _num_data(data)
    n_val = max(1, round(validation * n))
    if n_val >= n:
        raise ValueError(f"{n} data are too few to hold out a validation fraction of {validation}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_index, train_index = order[:n_val], order[n_val:]
    if isinstance(data, Dataset):
        return torch.utils.data.Subset(data, train_index.tolist()), torch.utils.data.Subset(data, val_index.tolist())
    x, y = _unpack(data)
    return (
        (x[train_index], None if y is None else y[train_index]),
        (x[val_index], None if y is None else y[val_index]),
    )


def _unpack(data: Data) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(data, torch.Tensor):
        return data, None
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise TypeError(f"data must be a tensor, a pair (x, y) of tensors or a torch Dataset, not {type(data).__name__}")


def _num_data(data: Data) -> int:
    return len(data) if isinstance(data, Dataset) else len(_unpack(data)[0])


def _collated(batch: torch.Tensor | tuple | list) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A collated ``Dataset`` batch: ``x``, ``(x,)`` or ``(x, y)``."""
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1] if len(batch) > 1 else None
    return batch, None


def _as_tensors(data: Data) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Collate a whole data set (used for validation scoring)."""
    if not isinstance(data, Dataset):
        return _unpack(data)
    return _collated(next(iter(DataLoader(data, batch_size=len(data)))))


def _batches(
    data: Data,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    distributed: bool = False,
    pure_labels: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    if transform is not None:
        for x, y in _batches(data, batch_size, generator, device, distributed=distributed, pure_labels=pure_labels):
            yield transform(x), y
        return
    if isinstance(data, Dataset):
        for batch in DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator):
            yield _to_device(_collated(batch), device)
        return
    x, y = _unpack(data)
    order = torch.randperm(len(x), generator=generator)
    if pure_labels and y is not None:
        yield from _pure_batches(x, y, order, batch_size, generator)
        return
    for start in range(0, len(x), batch_size):
        index = order[start : start + batch_size].to(x.device)
        if distributed:
            if len(index) < parallel.world_size():
                continue  # some process would get no rows
            index = parallel.shard(index)
        yield x[index], None if y is None else y[index]


def _pure_batches(
    x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Batches that are wholly labelled (with their labels) or wholly unlabelled (``y=None``), in
    a random order, as a semi-supervised program that switches on ``y is None`` needs."""
    missing = missing_labels(y)[order].cpu()
    indices = [order[~missing], order[missing]]
    batches = [(kind, start) for kind in (0, 1) for start in range(0, len(indices[kind]), batch_size)]
    for position in torch.randperm(len(batches), generator=generator).tolist():
        kind, start = batches[position]
        index = indices[kind][start : start + batch_size].to(x.device)
        yield x[index], (y[index] if kind == 0 else None)


def _start_distributed(data: Data, device: torch.device, loss: str, batch_size: int, seed: int | None) -> torch.device:
    """Check what distributed training needs, join the process group and return the device."""
    if isinstance(data, Dataset):
        raise ValueError("distributed training shards tensors; pass the data as a tensor or an (x, y) pair")
    if loss != AUTO:
        raise ValueError(f"distributed training averages FastSVI's gradients; use loss='auto', not {loss!r}")
    if seed is None:
        raise ValueError("distributed training needs a seed: the processes must agree on the minibatch order")
    device = parallel.initialize(device)
    if batch_size < parallel.world_size():
        raise ValueError(f"batch_size {batch_size} is smaller than the {parallel.world_size()} processes sharing it")
    return device


def _supported(batches: Iterator, inspection: Inspection) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The batches, each checked to lie in the likelihood's support (FastSVI does not validate)."""
    for x, y in batches:
        inspection.check_support(x)
        yield x, y


def _check_data(data: Data, validation: float | Data | None, model: Callable) -> None:
    """Clear errors, before anything trains, for training data and explicit validation data that
    are empty, not floating-point or non-finite, with mismatched labels, or (validation data) of
    another datum shape or dtype than the training data."""
    x, y = _checked(data, "the training data", model)
    if validation is None or isinstance(validation, (int, float)):
        return  # a held-out fraction is training data, checked above
    x_val, y_val = _checked(validation, "the validation data", model)
    if x_val.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"the validation data have datum shape {tuple(x_val.shape[1:])} but the training data "
            f"{tuple(x.shape[1:])}; pass validation data shaped like the training data"
        )
    if x_val.dtype != x.dtype:
        raise TypeError(
            f"the validation data are {x_val.dtype} but the training data {x.dtype}; convert them with "
            f"x_val.to({x.dtype})"
        )
    if y is not None and y_val is not None and y_val.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"the validation labels have shape {tuple(y_val.shape[1:])} per datum but the training labels "
            f"{tuple(y.shape[1:])}"
        )


def _checked(data: Data, name: str, model: Callable) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``data`` as tensors (a Dataset: its first items), checked to be non-empty, floating-point
    and finite, with one label per datum, and by the model's ``validate(x, y)`` if it has one."""
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise ValueError(f"{name} (a Dataset) hold no items")
        x, y = _as_tensors(torch.utils.data.Subset(data, range(min(256, len(data)))))
    else:
        x, y = _unpack(data)
    check_data(x, name)
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape[:1] != x.shape[:1]):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"labels y of {name} must be a tensor with one entry per datum ({x.shape[0]}), got {shape}")
    if hasattr(model, "validate"):
        model.validate(x, y)
    return x, y


def _first_batch(data: Data, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(data, Dataset):
        return _to_device(_as_tensors(torch.utils.data.Subset(data, range(min(batch_size, len(data))))), device)
    x, y = _unpack(data)
    return x[:batch_size], None if y is None else y[:batch_size]


def _make_svi(
    model: Callable,
    guide: Callable,
    optim: JointOptim,
    options: _Options,
    inspection: Inspection,
    hook,
    kl_weight: KLWeightMessenger | None,
) -> Stepper:
    """:class:`FastSVI` for ``loss="auto"`` (it serves the pair or hands it to the Pyro ELBO that
    does), else Pyro's SVI with the ELBO asked for; with free bits, Pyro's SVI with
    :class:`~pyro_vae.free_bits.FreeBitsELBO`."""
    particles = {
        "num_particles": options.num_particles,
        "vectorize_particles": options.vectorize_particles,
        "max_plate_nesting": inspection.plate_nesting,
    }
    if options.free_bits > 0:
        for site in latent_sites(inspection.guide_trace).values():  # the first batch's; later ones as they come
            check_floorable(site)
        plate = inspection.convention.data_plate
        return SVI(model, guide, optim, FreeBitsELBO(options.free_bits, plate, **particles))
    if options.loss == AUTO:
        return FastSVI(
            model,
            guide,
            optim,
            max_plate_nesting=inspection.plate_nesting,
            num_particles=options.num_particles,
            vectorize_particles=options.vectorize_particles,
            traces=(inspection.model_trace, inspection.guide_trace),
            gradient_hook=hook,
            capture=options.capture,
            kl_weight=kl_weight,
        )
    estimator = LOSSES[options.loss]
    if options.importance_weighted:  # vectorized where the program allows
        elbo = estimator(options.num_particles, inspection.plate_nesting, data_plate=inspection.convention.data_plate)
    else:
        elbo = estimator(**particles)
    return SVI(model, guide, optim, elbo)


def _warn_if_uncaptured(svi: Stepper, loss: str) -> None:
    """``capture=True`` was asked for: say why the step runs eagerly, where it does."""
    refusal = svi.capture_refusal() if isinstance(svi, FastSVI) else f"loss={loss!r} trains with Pyro's SVI"
    if refusal is not None:
        warnings.warn(f"capture=True: the training step runs eagerly, because {refusal}", stacklevel=4)


class _PairParameters:
    """The tensors of Pyro's parameter store that belong to the model/guide pair: those its
    inspection found and those the optimizer has stepped since (a site first seen later)."""

    def __init__(self, inspection: Inspection, optim: JointOptim) -> None:
        self.inspection = inspection
        self.optim = optim

    def __call__(self) -> dict[str, torch.Tensor]:
        owned = self.inspection.parameters()
        store = pyro.get_param_store()
        for tensor in self.optim.parameters:
            name = store._param_to_name.get(tensor)
            if name is not None:
                owned.setdefault(name, tensor)
        return owned

    def nonfinite(self) -> list[str]:
        return [name for name, value in self().items() if not value.isfinite().all()]

    def copy(self) -> dict[str, torch.Tensor]:
        return {name: value.detach().clone() for name, value in self().items()}

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in self().items():
                if name in saved:
                    value.copy_(saved[name])


@dataclass(frozen=True)
class _Options:
    """fit's options, as given (see :func:`fit`)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    clip_norm: float | None
    loss: str
    num_particles: int
    vectorize_particles: bool
    beta: float
    warmup_epochs: float
    free_bits: float
    validation: float | Data | None
    patience: int | None
    device: str
    seed: int | None
    progress: bool | None
    transform: Callable[[torch.Tensor], torch.Tensor] | None
    on_epoch_end: Callable[[TrainingState], None] | None
    resume: TrainingState | None
    on_nonfinite: str
    distributed: bool
    max_minutes: float | None
    convention: Convention | None
    label_batches: str
    capture: bool
    extra_loss: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None

    @property
    def importance_weighted(self) -> bool:
        """Whether the loss is an importance-weighted bound (``"iwae"``, ``"dreg"``)."""
        return self.loss in LOSSES and issubclass(LOSSES[self.loss], ImportanceWeightedELBO)

    @property
    def objective(self) -> str:
        """What the history's training column holds (:attr:`History.objective`)."""
        if self.free_bits > 0:
            return f"ELBO with free bits (λ = {self.free_bits:g})"
        return self.validation_objective

    @property
    def validation_objective(self) -> str:
        """What the history's validation column holds: the bound an importance-weighted loss
        trains, else the ELBO."""
        return f"IWAE bound (K = {self.num_particles})" if self.importance_weighted else "ELBO"

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs} and {self.batch_size}")
        if self.on_nonfinite not in ("raise", "rollback"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'rollback', got {self.on_nonfinite!r}")
        if self.loss != AUTO and self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {[AUTO, *sorted(LOSSES)]}")
        if self.loss == "jit" and self.warmup_epochs > 0:
            raise ValueError(
                "KL warm-up changes β every step, which a compiled (jit) loss cannot follow; use loss='trace'"
            )
        if self.label_batches not in LABEL_BATCHES:
            raise ValueError(f"label_batches must be one of {LABEL_BATCHES}, got {self.label_batches!r}")
        if self.extra_loss is not None and (self.capture or self.distributed):
            raise ValueError(
                "extra_loss adds a term outside the ELBO's step, which neither a captured step (capture=True) nor "
                "distributed training includes; drop one of them"
            )
        if self.num_particles < 1:
            raise ValueError(f"num_particles must be at least 1, got {self.num_particles}")
        if not 0 <= self.free_bits < math.inf:
            raise ValueError(f"free_bits must be a finite number of nats ≥ 0, got {self.free_bits}")
        if self.free_bits > 0 and self.loss not in (AUTO, "trace"):
            raise ValueError(
                f"free_bits floors the ELBO's KL terms: train with loss='auto' or 'trace', not {self.loss!r}"
            )
        if self.free_bits > 0 and self.distributed:
            raise ValueError("free_bits trains with Pyro's SVI, which distributed training does not average; drop one")


def fit(
    model: Callable,
    guide: Callable,
    data: Data,
    *,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    clip_norm: float | None = None,
    loss: str = AUTO,
    num_particles: int = 1,
    vectorize_particles: bool = False,
    beta: float = 1.0,
    warmup_epochs: float = 0.0,
    free_bits: float = 0.0,
    validation: float | Data | None = 0.1,
    patience: int | None = None,
    device: str = "cpu",
    seed: int | None = None,
    progress: bool | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_epoch_end: Callable[[TrainingState], None] | None = None,
    resume: TrainingState | None = None,
    on_nonfinite: str = "raise",
    distributed: bool = False,
    max_minutes: float | None = None,
    convention: Convention | None = None,
    label_batches: str = "mixed",
    capture: bool = False,
    extra_loss: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
) -> History:
    """Train ``model`` and ``guide`` by SVI and return the :class:`History`.

    :param model: a Pyro model following the convention of :mod:`pyro_vae.convention`, called as
        :mod:`pyro_vae.program` says (``model(x, y, size=N)``, each argument where its signature
        takes it); its parameters live in ``nn.Module``/``PyroModule`` attributes or
        ``pyro.param`` statements. If it has a method ``validate(x, y)``, that is called once on
        the training data before anything else (to reject, say, unknown labels).
    :param guide: the amortized guide, same signature.
    :param data: a tensor ``x``, a pair ``(x, y)`` of tensors, or a torch ``Dataset`` whose items
        are ``x`` or ``(x, y)``.
    :param int epochs: passes over the training data.
    :param int batch_size: minibatch size.
    :param float lr: learning rate.
    :param str optimizer: ``"adam"`` (:class:`torch.optim.Adam` with its fused kernel) or
        ``"clipped-adam"`` (Pyro's Adam with gradient clipping and optional decay).
    :param clip_norm: clip each parameter's gradient to this norm (Pyro clips per parameter).
    :param str loss: ``"auto"`` (the default: :class:`~pyro_vae.fast_svi.FastSVI`, which computes the
        ``Trace_ELBO`` estimator with less work per step and hands the pair, from the first site it
        does not serve on, to ``Trace_ELBO`` or, for an enumerated site, ``TraceEnum_ELBO``; ``History.estimator``
        says which trained it), ``"trace"`` (:class:`~pyro.infer.Trace_ELBO`), ``"meanfield"``
        (:class:`~pyro.infer.TraceMeanField_ELBO`, analytic KL where available), ``"jit"``
        (:class:`~pyro.infer.JitTrace_ELBO`) or ``"enum"`` (:class:`~pyro.infer.TraceEnum_ELBO`:
        discrete sites marked for enumeration are summed out exactly), ``"iwae"``
        (:class:`~pyro_vae.importance_weighted.ImportanceWeightedELBO`: the importance-weighted
        bound of ``num_particles`` draws per datum, Burda et al. 2016; the reported ELBOs are then
        that bound) or ``"dreg"`` (:class:`~pyro_vae.importance_weighted.DoublyReparameterizedELBO`:
        the same bound with the doubly reparameterized gradient, Tucker et al. 2019).
    :param int num_particles: ELBO particles per step (importance samples per datum for
        ``"iwae"`` and ``"dreg"``, always vectorized where the program allows).
    :param bool vectorize_particles: evaluate the particles in one vectorized pass.
    :param float beta: the KL weight β (Higgins et al. 2017), applied to every latent site of the
        model and the guide.
    :param float warmup_epochs: raise β linearly from 0 over this many epochs.
    :param float free_bits: λ > 0 floors every latent site's KL term at λ nats per datum
        (:class:`~pyro_vae.free_bits.FreeBitsELBO`, Kingma et al. 2016), so that no site can
        collapse onto its prior for a gain: the lower layers of a hierarchical VAE. Trains with
        ``loss="auto"`` or ``"trace"`` through Pyro's SVI; the reported training objective is the
        floored one, the validation ELBO the plain ELBO.
    :param validation: a fraction of ``data`` to hold out, explicit validation data, or ``None``.
        Explicit validation data are checked as the training data are (and must have their datum
        shape and dtype). The validation ELBO (β = 1, one particle; for ``"iwae"`` and ``"dreg"``
        the bound they train, of ``num_particles`` draws) is computed after every epoch, with the
        one inspection of the pair that training uses.
    :param patience: stop when the validation ELBO has not improved for this many epochs, and
        restore the parameters of the best epoch.
    :param str device: ``"cpu"``, ``"cuda"`` or ``"auto"``; the data are moved there, and so are
        a model or guide that is an ``nn.Module`` and the module of a bound method
        (``fit(vae.model, vae.guide, ...)``).
    :param seed: seeds Pyro, torch, the held-out validation split and the minibatch order; the
        same seed gives the same result on CPU for the same initial parameters (seed before
        building the networks, e.g. with ``pyro.set_rng_seed``, to fix those too). ``None`` (the
        default) leaves the random state as it is and draws from it, the validation split and the
        minibatch order included (a resumed run keeps its split).
    :param progress: show a progress bar (``None``: only on a terminal).
    :param transform: applied to every training minibatch ``x`` on the device, and once to the
        validation data; e.g. ``torch.bernoulli`` on grey-level images binarizes them afresh in
        every epoch (dynamic binarization), which regularizes like data augmentation.
    :param on_epoch_end: called after every epoch with the :class:`~pyro_vae.resume.TrainingState`
        (save it with the parameters to resume later).
    :param resume: a state from ``on_epoch_end``: training continues after its epoch, with its
        optimizer, random-number and minibatch-order states. Load the model's and guide's
        parameters of that epoch first. An interrupted-then-resumed run on CPU matches an
        uninterrupted one.
    :param str on_nonfinite: what a non-finite loss (or a step with a non-finite gradient, which
        makes the next loss non-finite) or a divergence (an epoch's objective per datum more than
        :data:`DIVERGENCE_FACTOR` times its magnitude below the best epoch's, once the KL warm-up
        is over) does: ``"raise"`` stops with :class:`FloatingPointError`
        naming the epoch and step; ``"rollback"`` restores the parameters and optimizer state of
        the last completed epoch, halves the learning rate and repeats the epoch, up to
        :data:`MAX_ROLLBACKS` times in a run (``History.rollbacks`` counts them).
    :param bool distributed: data-parallel training in the processes started by ``torchrun``
        (:mod:`pyro_vae.distributed`): each takes its share of every minibatch, gradients are
        averaged, and the reported ELBOs are means over the processes. Needs tensor data and
        ``loss="auto"`` with a reparameterizable guide, and a ``seed``; a last minibatch with
        fewer rows than processes is skipped. A resumed distributed run continues with fresh
        draws per process (an uninterrupted run's equality holds for single-process runs).
    :param max_minutes: a training-time budget: no epoch starts once the epochs so far took this
        long (``History.wall_time``). With ``patience``, the best epoch's parameters are restored.
    :param convention: the names of the data plate and the observed and label sites, when the
        program uses others than ``"data"``, ``"x"`` and ``"y"``
        (:class:`~pyro_vae.convention.Convention`).
    :param str label_batches: ``"mixed"`` (the default): minibatches mix labelled and unlabelled
        data and the labels are passed as they are, missing ones marked (``-1``, or a NaN row of a
        one-hot tensor) for a program that masks them (``obs_mask``); ``"pure"``: every minibatch
        is wholly labelled or wholly unlabelled, and an unlabelled one is passed with ``y=None``,
        as for Pyro's M2 example (``ss_vae_M2.py``). The validation ELBO is then computed without
        labels when some validation data have none.
    :param bool capture: record ``loss="auto"``'s step once per minibatch shape as a graph of
        tensor operations and replay it (:mod:`pyro_vae.captured_step`): the same losses and
        parameters bit for bit, with less Python per step. For programs whose operations depend
        only on their arguments' shapes (not on Python state such as a counter); where the step
        cannot be recorded (another estimator, gradient clipping, several particles, distributed
        training) it runs eagerly, with a warning that says why.
    :param extra_loss: a term added to the training objective: ``extra_loss(x, y)`` is called on
        every (transformed) training minibatch before its SVI step and returns a 0-d tensor, a
        loss per datum (as -ELBO / N is); the gradient of ``N * extra_loss(x, y)`` for the pair's
        parameters is added to the ELBO's, and any other tensor it reaches is left to its owner
        (e.g. :class:`~pyro_vae.vae_gan.AdversarialTerm`, which steps its discriminator itself).
        The history, the validation ELBO and every score stay the ELBO's; a rollback restores the
        pair, not the term's own state. Not with ``capture`` (the recorded step is the ELBO's
        alone) nor ``distributed``.
    """
    options = _Options(**{name: value for name, value in locals().items() if name in _Options.__dataclass_fields__})
    options.check()
    _check_data(data, validation, model)
    if seed is not None:
        pyro.set_rng_seed(seed)
    run = _Run.start(model, guide, data, options)
    return run.train()


@dataclass
class _Run:
    """One call of :func:`fit`: the pair, its data, its stepper and what the loop keeps."""

    options: _Options
    model: Callable
    guide: Callable
    train_data: Data
    size: int
    validation: _Validation | None
    device: torch.device
    inspection: Inspection
    svi: Stepper
    parameters: _PairParameters
    kl_handler: KLWeightMessenger
    generator: torch.Generator
    history: History
    best: _BestEpoch

    @classmethod
    def start(cls, model: Callable, guide: Callable, data: Data, options: _Options) -> _Run:
        """Place the data and the pair on the device, inspect the pair once on the first batch,
        check the data's support and build the stepper."""
        device = resolve_device(options.device)
        if options.distributed:
            device = _start_distributed(data, device, options.loss, options.batch_size, options.seed)
        for module in owning_modules(model, guide):
            module.to(device)
        seed = _run_seed(options)
        train_data, val_data = split_data(data, options.validation, seed)
        if options.patience is not None and val_data is None:
            raise ValueError("early stopping (patience) needs validation data; pass validation=0.1 or your own data")
        if options.label_batches == "pure" and isinstance(train_data, Dataset):
            raise ValueError("label_batches='pure' sorts tensor labels into batches; pass the data as an (x, y) pair")
        train_data = _to_device(train_data, device)
        size = _num_data(train_data)
        convention = options.convention or DEFAULT
        model, guide = bind(model, convention.data_plate), bind(guide, convention.data_plate)
        first_x, first_y = _first_batch(train_data, options.batch_size, device)
        if options.transform is not None:
            first_x = options.transform(first_x)
        if options.label_batches == "pure" and first_y is not None and missing_labels(first_y).any():
            first_y = None
        inspection = inspect_pair(model, guide, first_x, first_y, size, convention)
        if not isinstance(train_data, Dataset) and options.transform is None:
            inspection.check_support(_unpack(train_data)[0])
        kl_handler = KLWeightMessenger(linear_warmup(0.0, options.beta, options.warmup_epochs))
        kl_weighting = options.beta != 1.0 or options.warmup_epochs > 0
        if kl_weighting:
            model, guide = kl_weighted(model, kl_handler), kl_weighted(guide, kl_handler)
        optim = make_optimizer(options.optimizer, options.lr, options.clip_norm)
        parameters = _PairParameters(inspection, optim)
        averager = parallel.GradientAverager() if options.distributed else None
        if averager is not None:  # every process starts from rank 0's parameters
            averager.synchronize(list(parameters().values()))
        svi = _make_svi(model, guide, optim, options, inspection, averager, kl_handler if kl_weighting else None)
        if options.capture:
            _warn_if_uncaptured(svi, options.loss)
        validation = _Validation.start(val_data, device, options, inspection) if val_data is not None else None
        if options.distributed:  # the same minibatch order in every process, each its own draws
            pyro.set_rng_seed(options.seed + parallel.rank())
        generator = torch.Generator().manual_seed(seed)
        history = History(objective=options.objective, validation_objective=options.validation_objective)
        best = _BestEpoch(parameters, options.patience is not None)
        return cls(
            options, inspection.model, inspection.guide, train_data, size, validation, device, inspection, svi,
            parameters, kl_handler, generator, history, best,
        )  # fmt: skip

    def train(self) -> History:
        """The epochs, from the first (or the one after ``resume``) to the last, early stop or
        time budget; returns the :class:`History`."""
        options, history = self.options, self.history
        first_epoch = 1
        if options.resume is not None:
            first_epoch = _resume(copy.deepcopy(options.resume), self.svi, history, self.best, self.generator)
            if options.distributed:  # the saved random state is rank 0's: give each process its own draws again
                pyro.set_rng_seed(options.seed + parallel.rank() + parallel.world_size() * first_epoch)
            if first_epoch > options.epochs or history.stopped_early:
                return history  # the run was complete: its parameters are the final ones
        bar = progress_bar(range(first_epoch, options.epochs + 1), desc="training", unit="epoch", show=options.progress)
        last_good = (
            _LastGood(self.svi, self.parameters, first_epoch - 1) if options.on_nonfinite == "rollback" else None
        )
        for epoch in bar:
            start = time.perf_counter()
            train_elbo = self._epoch(epoch, last_good)
            val_elbo = self._validation_elbo()
            train_elbo, val_elbo = parallel.mean_over_processes(train_elbo), parallel.mean_over_processes(val_elbo)
            history.append(epoch, train_elbo, val_elbo, self.kl_handler.weight, time.perf_counter() - start)
            bar.set_postfix(train_elbo=f"{train_elbo:.3f}", val_elbo=f"{val_elbo:.3f}")
            if self.best.update(epoch, val_elbo):
                history.best_epoch = epoch
            elif options.patience is not None and history.best_epoch is not None:
                history.stopped_early = epoch - history.best_epoch >= options.patience
            if options.on_epoch_end is not None:
                options.on_epoch_end(_state(epoch, self.svi, history, self.best, self.generator))
            spent = parallel.max_over_processes(history.wall_time) if options.distributed else history.wall_time
            if history.stopped_early or (options.max_minutes is not None and spent >= 60 * options.max_minutes):
                break
        self.best.restore()
        history.estimator = _estimator_name(self.svi)
        return history

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        options = self.options
        batches = _batches(
            self.train_data, options.batch_size, self.generator, self.device, options.transform,
            options.distributed, options.label_batches == "pure",
        )  # fmt: skip
        if isinstance(self.train_data, Dataset) or options.transform is not None:
            batches = _supported(batches, self.inspection)
        return batches

    def _epoch(self, epoch: int, last_good: _LastGood | None) -> float:
        """One pass over the training data, repeated after a rollback; the mean objective per datum."""
        schedule = _KLSchedule(
            self.kl_handler, self.options.beta, self.options.warmup_epochs, epoch,
            math.ceil(self.size / self.options.batch_size),
        )  # fmt: skip
        while True:
            try:
                train_elbo = _train_epoch(
                    self.svi, self._batches(), self.size, schedule, self.parameters, self.options.extra_loss
                )
                _check_divergence(train_elbo, epoch, self.history, self.options.warmup_epochs)
                break
            except FloatingPointError as fault:
                if last_good is None:
                    raise FloatingPointError(f"{fault}; {REMEDIES}, {ROLLBACK_OPTION}") from None
                if self.history.rollbacks >= MAX_ROLLBACKS:
                    raise FloatingPointError(
                        f"{fault}, after {MAX_ROLLBACKS} rollbacks in this run (the last restored "
                        f"{last_good.restored()} with the learning rate lowered to {last_good.svi.optim.lr:.3g}); "
                        f"rolling back again will not help: {REMEDIES}"
                    ) from None
                self.history.rollbacks += 1
                warnings.warn(
                    f"{fault}; {last_good.roll_back()} and repeated epoch {epoch}; if faults recur, {REMEDIES}",
                    RuntimeWarning,
                    stacklevel=4,
                )
        if last_good is not None:
            last_good.save(epoch)
        return train_elbo

    def _validation_elbo(self) -> float:
        return math.nan if self.validation is None else self.validation.elbo()


def _run_seed(options: _Options) -> int:
    """The seed of the validation split and the minibatch order: ``seed``; with ``seed=None``, the
    resumed run's, or one drawn from torch's global generator (advanced, never reseeded), so
    every unseeded run holds out other data, as it draws everything else afresh."""
    if options.seed is not None:
        return options.seed
    if options.resume is not None:
        generator = torch.Generator()
        generator.set_state(options.resume.batch_order)
        return generator.initial_seed()
    return int(torch.randint(2**62, ()).item())


@dataclass
class _Validation:
    """The validation data, on the device and transformed once, scored after every epoch with
    fit's one inspection of the pair (β = 1): the ELBO (one particle, as
    :func:`~pyro_vae.scoring.elbo`), or for an importance-weighted loss the bound it trains, of
    ``num_particles`` draws per datum (an IWAE-trained pair's ELBO may fall as its bound rises)."""

    x: torch.Tensor
    y: torch.Tensor | None
    inspection: Inspection
    num_particles: int = 1
    vectorized: bool = True  # whether the pair took the particle dimension, found in the first epoch

    @classmethod
    def start(cls, data: Data, device: torch.device, options: _Options, inspection: Inspection) -> _Validation:
        """The validation data ready to score; checked here, once, against the pair."""
        x, y = _to_device(_as_tensors(data), device)
        if options.transform is not None:
            x = options.transform(x)
        if options.label_batches == "pure" and y is not None and missing_labels(y).any():
            y = None
        check_data(x, "the validation data")
        inspection.require_guide_covers_model()
        inspection.check_support(x)
        return cls(x, y, inspection, options.num_particles if options.importance_weighted else 1)

    def elbo(self) -> float:
        """The mean per-datum validation objective (the ELBO, or the importance-weighted bound),
        with the current parameters."""
        scorer = _Scorer(self._with_current_globals())
        scorer.vectorized = self.vectorized
        rows_per_chunk, particles = max(1, DEFAULT_MAX_BATCH // self.num_particles), self.num_particles
        with torch.no_grad():
            per_datum = torch.cat([
                particle_logsumexp(scorer.log_weights(
                    self.x[start : start + rows_per_chunk], self._labels(start, rows_per_chunk), particles
                )) - math.log(particles)
                for start in range(0, len(self.x), rows_per_chunk)
            ])  # fmt: skip
        self.vectorized = scorer.vectorized
        return per_datum.mean().item()

    def _labels(self, start: int, rows: int) -> torch.Tensor | None:
        return None if self.y is None else self.y[start : start + rows]

    def _with_current_globals(self) -> Inspection:
        """The inspection, with a guide trace of the current parameters where the pair has global
        latents (the scorer holds them at the means of the guide's distributions, which training
        moves); the structure is not inspected again."""
        if not self.inspection.global_latents:
            return self.inspection
        x, y = self.x[:INSPECTED_ROWS], self._labels(0, INSPECTED_ROWS)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices), poutine.block():
            guide_trace = poutine.trace(self.inspection.guide).get_trace(x, y, size=x.shape[0])
        return dataclasses.replace(self.inspection, guide_trace=guide_trace)


def _state(epoch: int, svi: Stepper, history: History, best: _BestEpoch, generator: torch.Generator) -> TrainingState:
    return TrainingState(
        epoch=epoch,
        history=asdict(history),
        optimizer=copy.deepcopy(svi.optim.get_state()),
        batch_order=generator.get_state(),
        rng=rng_state(),
        best_val_elbo=best.val_elbo,
        best_parameters=best.parameters,
    )


def _resume(state: TrainingState, svi: Stepper, history: History, best: _BestEpoch, generator: torch.Generator) -> int:
    """Put the loop where ``state`` left it; returns the next epoch. A state saved by a run that
    trained another objective (another loss, K or free bits) is refused: the history would mix
    the two under one name."""
    saved = state.history.get("objective", history.objective)  # states saved before the field: no check
    if saved != history.objective:
        raise ValueError(
            f"the run being resumed trained the {saved}, and these options train the {history.objective}: resume "
            "with the loss, num_particles and free_bits it started with"
        )
    for key, value in state.history.items():
        setattr(history, key, value)
    best.val_elbo, best.parameters = state.best_val_elbo, state.best_parameters
    svi.optim.set_state(state.optimizer)
    generator.set_state(state.batch_order)
    set_rng_state(state.rng)
    return state.epoch + 1


@dataclass
class _KLSchedule:
    """Sets the KL weight for each step of one epoch (linear warm-up, then constant β)."""

    handler: KLWeightMessenger
    beta: float
    warmup_epochs: float
    epoch: int
    steps_per_epoch: int

    def set(self, step: int) -> None:
        progress = self.epoch - 1 + step / self.steps_per_epoch
        self.handler.weight = linear_warmup(progress, self.beta, self.warmup_epochs)


def _train_epoch(
    svi: Stepper,
    batches: Iterator,
    size: int,
    schedule: _KLSchedule,
    parameters: _PairParameters,
    extra_loss: Callable | None = None,
) -> float:
    """One pass of SVI steps; returns the mean training objective per datum. A numerical fault
    raises :class:`FloatingPointError` saying what broke where (the caller adds what to do)."""
    total, steps = 0.0, 0
    for step, (x, y) in enumerate(batches):
        schedule.set(step)
        where = f"at epoch {schedule.epoch}, step {step + 1}"
        owned = None if extra_loss is None else _add_extra_gradient(extra_loss, x, y, size, parameters(), where)
        try:
            step_loss = svi.step(x, y=y, size=size)
        except ValueError:
            # Distribution argument checks reject NaN parameters before any loss is computed.
            broken = parameters.nonfinite()
            if broken:
                raise FloatingPointError(f"parameters {broken[:3]} became non-finite {where}") from None
            raise
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"the loss became {step_loss} {where}")
        for tensor in owned or ():  # a parameter this step's ELBO did not use must not carry the term on
            tensor.grad = None
        total, steps = total + step_loss, steps + 1
    broken = parameters.nonfinite()
    if broken:  # the epoch's last step can break the parameters and still report a finite loss
        raise FloatingPointError(f"parameters {broken[:3]} became non-finite in epoch {schedule.epoch}")
    return -total / (size * steps)


def _add_extra_gradient(
    extra_loss: Callable, x: torch.Tensor, y: torch.Tensor | None, size: int, owned: dict, where: str
) -> list[torch.Tensor]:
    """Add the gradient of ``size * extra_loss(x, y)`` for the pair's parameters to their
    ``.grad``, to which the estimator's backward pass adds the ELBO's before its optimizer step;
    returns those parameters."""
    term = extra_loss(x, y)
    if not isinstance(term, torch.Tensor) or term.dim() != 0:
        raise TypeError(f"extra_loss(x, y) must return a 0-d tensor (a loss per datum), got {term!r:.80}")
    if not torch.isfinite(term):
        raise FloatingPointError(f"the extra loss became {term.item()} {where}")
    tensors = list(owned.values())
    if term.requires_grad:
        for tensor, gradient in zip(tensors, torch.autograd.grad(size * term, tensors, allow_unused=True), strict=True):
            if gradient is not None:  # contiguous: the backward pass adds to it in place
                tensor.grad = gradient.contiguous() if tensor.grad is None else tensor.grad + gradient
    return tensors


def _check_divergence(train_elbo: float, epoch: int, history: History, warmup_epochs: float) -> None:
    """Raise :class:`FloatingPointError` when the epoch's objective per datum fell by orders of
    magnitude: more than :data:`DIVERGENCE_FACTOR` times ``max(|best|, 1)`` below the best earlier
    epoch's. Only epochs after the KL warm-up are compared (the objective changes with β)."""
    pairs = zip(history.epoch, history.train_elbo, strict=True)
    after_warmup = [(value, past) for past, value in pairs if past - 1 >= warmup_epochs]
    if epoch - 1 < warmup_epochs or not after_warmup:
        return
    best, best_epoch = max(after_warmup)
    if train_elbo < best - DIVERGENCE_FACTOR * max(abs(best), 1.0):
        raise FloatingPointError(
            f"training diverged: the objective per datum fell to {train_elbo:.4g} in epoch {epoch}, "
            f"from {best:.4g} in epoch {best_epoch}"
        )


class _LastGood:
    """The pair's parameters and the optimizer state at the end of the last completed epoch, to
    roll back to after a numerical fault."""

    def __init__(self, svi: Stepper, parameters: _PairParameters, epoch: int) -> None:
        self.svi = svi
        self.pair = parameters
        self.save(epoch)  # after a resume, with the optimizer states still waiting for their first step

    def save(self, epoch: int) -> None:
        """Keep the state at the end of ``epoch`` (0: before the first)."""
        self.epoch = epoch
        self.parameters = self.pair.copy()
        self.optimizer = copy.deepcopy(self.svi.optim.get_state())

    def restored(self) -> str:
        """What a rollback restores, in words."""
        when = f"the end of epoch {self.epoch}" if self.epoch > 0 else "the start of training"
        return f"the pair's parameters and the optimizer state from {when}"

    def roll_back(self) -> str:
        """Restore the saved state and halve the learning rate; says what it did."""
        self.pair.restore(self.parameters)
        optim = self.svi.optim
        lr = optim.lr * ROLLBACK_LR_FACTOR  # the current rate: a second fault in one epoch halves it again
        optim.restart(copy.deepcopy(self.optimizer))
        optim.lr = lr
        return f"rolled back: restored {self.restored()}, learning rate lowered to {lr:.3g},"


class _BestEpoch:
    """The best validation ELBO so far and, for early stopping, a copy of the pair's parameters
    then (by parameter-store name)."""

    def __init__(self, pair: _PairParameters, keep_parameters: bool) -> None:
        self.pair = pair
        self.keep_parameters = keep_parameters
        self.val_elbo = -math.inf
        self.parameters: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, val_elbo: float) -> bool:
        if not val_elbo > self.val_elbo:
            return False
        self.val_elbo = val_elbo
        if self.keep_parameters:
            self.parameters = self.pair.copy()
        return True

    def restore(self) -> None:
        if self.parameters is not None:
            self.pair.restore(self.parameters)


def _estimator_name(svi: Stepper) -> str:
    if isinstance(svi, FastSVI):
        return svi.estimator
    return type(svi.loss_and_grads.__self__).__name__


def _to_device(data: Data, device: torch.device) -> Data:
    """Tensors move to ``device``; a ``Dataset`` stays where it is (its batches are moved)."""
    if isinstance(data, Dataset):
        return data
    x, y = _unpack(data)
    return x.to(device), None if y is None else y.to(device)
