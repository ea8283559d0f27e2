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
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pyro_vae import distributed as parallel
from pyro_vae.data import MISSING_LABEL
from pyro_vae.device import resolve_device
from pyro_vae.fast_svi import ENUMERATED, FastSVI, unsupported_reason
from pyro_vae.kl_weight import KLWeightMessenger, kl_weighted, linear_warmup
from pyro_vae.optim import JointOptim, make_optimizer
from pyro_vae.progress import progress_bar
from pyro_vae.resume import TrainingState, rng_state, set_rng_state
from pyro_vae.scoring import check_observed_support, check_support, elbo, max_plate_nesting
from pyro_vae.validation import check_data

AUTO = "auto"
Stepper = SVI | FastSVI
LOSSES: dict[str, type] = {
    "trace": Trace_ELBO,
    "meanfield": TraceMeanField_ELBO,
    "jit": JitTrace_ELBO,
    "enum": TraceEnum_ELBO,
}
MAX_ROLLBACKS = 3
REMEDIES = (
    "try a lower learning rate, gradient clipping (clip_norm), KL warm-up, or on_nonfinite='rollback' "
    "(pyro-vae train --on-nonfinite rollback)"
)
ROLLBACK_LR_FACTOR = 0.5
COLUMNS = ("epoch", "train_elbo", "val_elbo", "kl_weight", "seconds")

Data = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Dataset


@dataclass
class History:
    """What :func:`fit` did, one entry per epoch. ELBOs are per datum, in nats; ``train_elbo`` is
    the minibatch average of the β-weighted training objective, ``val_elbo`` the plain ELBO
    (β = 1) of the validation data, or NaN without validation data."""

    epoch: list[int] = field(default_factory=list)
    train_elbo: list[float] = field(default_factory=list)
    val_elbo: list[float] = field(default_factory=list)
    kl_weight: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    rollbacks: int = 0

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
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    if transform is not None:
        for x, y in _batches(data, batch_size, generator, device, distributed=distributed):
            yield transform(x), y
        return
    if isinstance(data, Dataset):
        for batch in DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator):
            yield _to_device(_collated(batch), device)
        return
    x, y = _unpack(data)
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), batch_size):
        index = order[start : start + batch_size].to(x.device)
        if distributed:
            if len(index) < parallel.world_size():
                continue  # some process would get no rows
            index = parallel.shard(index)
        yield x[index], None if y is None else y[index]


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


def _supported(batches: Iterator, support) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The batches, each checked to lie in the likelihood's support (FastSVI does not validate)."""
    for x, y in batches:
        check_support(support, x)
        yield x, y


def _check_training_data(data: Data, model: Callable) -> None:
    """Clear errors for empty, non-float or non-finite data and mismatched labels (a Dataset is
    checked on its first items); a model with a ``validate(x, y)`` method checks the rest."""
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise ValueError("the training Dataset is empty")
        x, y = _as_tensors(torch.utils.data.Subset(data, range(min(256, len(data)))))
    else:
        x, y = _unpack(data)
    check_data(x, "the training data")
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape[:1] != x.shape[:1]):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"labels y must be a tensor with one entry per datum ({x.shape[0]}), got {shape}")
    if hasattr(model, "validate"):
        model.validate(x, y)


def _first_batch(data: Data, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(data, Dataset):
        return _to_device(_as_tensors(torch.utils.data.Subset(data, range(min(batch_size, len(data))))), device)
    x, y = _unpack(data)
    return x[:batch_size], None if y is None else y[:batch_size]


def _structure_batch(
    data: Data, first: tuple[torch.Tensor, torch.Tensor | None]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first batch, with one row of a missing label (:data:`~pyro_vae.data.MISSING_LABEL`)
    added when it has none but the data do: a semi-supervised guide has sites (the missing
    labels') that only such rows create, and the choice of estimator must see them."""
    x, y = first
    if isinstance(data, Dataset) or y is None or y.dim() != 1 or (y == MISSING_LABEL).any():
        return first
    all_x, all_y = _unpack(data)
    missing = (all_y == MISSING_LABEL).nonzero()[:1, 0]
    if len(missing) == 0:
        return first
    return torch.cat([x, all_x[missing]]), torch.cat([y, all_y[missing]])


def _make_svi(
    model: Callable,
    guide: Callable,
    optim: JointOptim,
    loss: str,
    num_particles: int,
    vectorize_particles: bool,
    plate_nesting: int,
    first_batch: tuple[torch.Tensor, torch.Tensor | None],
    gradient_hook: Callable[[list[torch.Tensor], int, torch.Tensor], torch.Tensor] | None = None,
) -> Stepper:
    """:class:`FastSVI` for ``loss="auto"`` when it computes the same estimator, else Pyro's SVI
    (with ``TraceEnum_ELBO`` for a guide that enumerates, ``Trace_ELBO`` otherwise)."""
    if loss != AUTO and loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {[AUTO, *sorted(LOSSES)]}")
    if loss == AUTO:
        reason = "more than one particle" if num_particles > 1 else unsupported_reason(model, guide, *first_batch)
        if reason is None:
            return FastSVI(model, guide, optim, gradient_hook)
        if gradient_hook is not None:
            raise ValueError(f"distributed training needs a reparameterizable guide and one particle, but {reason}")
        loss = "enum" if reason.endswith(ENUMERATED) else "trace"
    elbo = LOSSES[loss](
        num_particles=num_particles, vectorize_particles=vectorize_particles, max_plate_nesting=plate_nesting
    )
    return SVI(model, guide, optim, elbo)


def _evict_stale_params(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None, size: int) -> None:
    """Make Pyro's global parameter store hold this model's and guide's own tensors.

    A ``pyro.param``/``pyro.module`` statement returns the tensor already stored under its name.
    After a previous model with the same parameter names (say, a second ``VAE()`` in the same
    session), the store would hand SVI the old tensors and the new modules would never train.
    Entries whose stored tensor is not the module's own parameter are dropped. If a name is still
    shared after that, the model and guide use one name for two tensors, which SVI cannot train.
    """
    store = pyro.get_param_store()
    for attempt in range(2):
        with torch.no_grad(), poutine.block(), poutine.trace(param_only=True) as params:
            guide_trace = poutine.trace(guide).get_trace(x, y=y, size=size)
            poutine.replay(model, trace=guide_trace)(x, y=y, size=size)
        stale = [
            name
            for name, site in params.trace.nodes.items()
            if len(site["args"]) > 1
            and isinstance(site["args"][1], nn.Parameter)
            and site["value"].unconstrained() is not site["args"][1]
        ]
        if not stale:
            return
        if attempt == 1:
            names = [name.replace("$$$", ".") for name in stale]
            raise ValueError(
                f"parameter names {names} are used by two different tensors (do the model and the guide "
                "have submodules with the same attribute name?); give them distinct names"
            )
        for name in stale:
            del store[name]


def _named_parameters() -> dict[str, torch.Tensor]:
    """Every (unconstrained) parameter in Pyro's store, by name: stable across processes, unlike
    the order of SVI's optimizer dictionary."""
    return dict(pyro.get_param_store().named_parameters())


def _copy_into(saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in _named_parameters().items():
            if name in saved:
                value.copy_(saved[name])


def fit(
    model: Callable,
    guide: Callable,
    data: Data,
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
    validation: float | Data | None = 0.1,
    patience: int | None = None,
    device: str = "cpu",
    seed: int | None = 0,
    progress: bool | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_epoch_end: Callable[[TrainingState], None] | None = None,
    resume: TrainingState | None = None,
    on_nonfinite: str = "raise",
    distributed: bool = False,
    max_minutes: float | None = None,
) -> History:
    """Train ``model`` and ``guide`` by SVI and return the :class:`History`.

    :param model: a Pyro model ``model(x, y=None, size=None)`` following the convention of
        :mod:`pyro_vae.scoring`; its parameters live in ``nn.Module``/``PyroModule`` attributes or
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
    :param str loss: ``"auto"`` (the default: :class:`~pyro_vae.fast_svi.FastSVI`, the
        ``Trace_ELBO`` estimator with less work per step, when the guide is reparameterizable and
        one particle is used; else ``"enum"`` for a guide that enumerates, ``"trace"`` otherwise; the
        first minibatch decides, with a row of a missing label added if it has none and the data do),
        ``"trace"`` (:class:`~pyro.infer.Trace_ELBO`), ``"meanfield"``
        (:class:`~pyro.infer.TraceMeanField_ELBO`, analytic KL where available), ``"jit"``
        (:class:`~pyro.infer.JitTrace_ELBO`) or ``"enum"`` (:class:`~pyro.infer.TraceEnum_ELBO`:
        discrete sites marked for enumeration are summed out exactly).
    :param int num_particles: ELBO particles per step.
    :param bool vectorize_particles: evaluate the particles in one vectorized pass.
    :param float beta: the KL weight β (Higgins et al. 2017), applied to every latent site of the
        model and the guide.
    :param float warmup_epochs: raise β linearly from 0 over this many epochs.
    :param validation: a fraction of ``data`` to hold out, explicit validation data, or ``None``.
        The validation ELBO (β = 1, one particle) is computed after every epoch.
    :param patience: stop when the validation ELBO has not improved for this many epochs, and
        restore the parameters of the best epoch.
    :param str device: ``"cpu"``, ``"cuda"`` or ``"auto"``; data and ``nn.Module`` model/guide are
        moved there.
    :param seed: seeds Pyro, torch and the minibatch order; the same seed gives the same result
        on CPU for the same initial parameters (seed before building the networks, e.g. with
        ``pyro.set_rng_seed``, to fix those too). ``None`` leaves the random state alone.
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
        makes the next loss non-finite) does: ``"raise"`` stops with :class:`FloatingPointError`
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
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    if on_nonfinite not in ("raise", "rollback"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'rollback', got {on_nonfinite!r}")
    if loss == "jit" and warmup_epochs > 0:
        raise ValueError("KL warm-up changes β every step, which a compiled (jit) loss cannot follow; use loss='trace'")
    _check_training_data(data, model)
    if seed is not None:
        pyro.set_rng_seed(seed)
    torch_device = resolve_device(device)
    if distributed:
        torch_device = _start_distributed(data, torch_device, loss, batch_size, seed)
    for part in (model, guide):
        if isinstance(part, nn.Module):
            part.to(torch_device)
    train_data, val_data = split_data(data, validation, seed or 0)
    if patience is not None and val_data is None:
        raise ValueError("early stopping (patience) needs validation data; pass validation=0.1 or your own data")
    train_data = _to_device(train_data, torch_device)
    size = _num_data(train_data)
    generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))

    first_x, first_y = _first_batch(train_data, batch_size, torch_device)
    if transform is not None:
        first_x = transform(first_x)
    all_x = None if isinstance(train_data, Dataset) or transform is not None else _unpack(train_data)[0]
    support = check_observed_support(model, guide, first_x, first_y, all_x)
    check_each_batch = support if all_x is None else None  # a Dataset or transformed batches
    _evict_stale_params(model, guide, first_x, first_y, size)
    averager = parallel.GradientAverager() if distributed else None
    if averager is not None:  # every process starts from rank 0's parameters
        averager.synchronize([value for _, value in sorted(_named_parameters().items())])
    kl_handler = KLWeightMessenger(linear_warmup(0.0, beta, warmup_epochs))
    weighted = beta != 1.0 or warmup_epochs > 0
    # Checks the convention up front (observed "x", sites in the "data" plate) and spares Pyro's
    # ELBOs their own guess of the plate nesting.
    plate_nesting = max_plate_nesting(model, guide, first_x, first_y)
    svi = _make_svi(
        kl_weighted(model, kl_handler) if weighted else model,
        kl_weighted(guide, kl_handler) if weighted else guide,
        make_optimizer(optimizer, lr, clip_norm),
        loss,
        num_particles,
        vectorize_particles,
        plate_nesting,
        _structure_batch(train_data, (first_x, first_y)),
        averager,
    )
    if seed is not None:
        # The set-up traces above draw from the random state, more of them when stale parameters
        # are evicted; training starts from the seed, so a seed gives one run whatever ran before.
        # In distributed training: the same minibatch order in every process, each its own draws.
        pyro.set_rng_seed(seed + parallel.rank() if distributed else seed)
    x_val, y_val = _to_device(_as_tensors(val_data), torch_device) if val_data is not None else (None, None)
    if transform is not None and x_val is not None:
        x_val = transform(x_val)
    history = History()
    best = _BestEpoch(keep_parameters=patience is not None)
    first_epoch = 1
    if resume is not None:
        first_epoch = _resume(copy.deepcopy(resume), svi, history, best, generator)
        if distributed:  # the saved random state is rank 0's: give each process its own draws again
            pyro.set_rng_seed(seed + parallel.rank() + parallel.world_size() * first_epoch)
        if first_epoch > epochs or history.stopped_early:
            return history  # the run was complete: its parameters are the final ones
    bar = progress_bar(range(first_epoch, epochs + 1), desc="training", unit="epoch", show=progress)
    last_good = _LastGood(svi) if on_nonfinite == "rollback" else None
    for epoch in bar:
        start = time.perf_counter()
        schedule = _KLSchedule(kl_handler, beta, warmup_epochs, epoch, math.ceil(size / batch_size))
        while True:
            batches = _batches(train_data, batch_size, generator, torch_device, transform, distributed)
            if check_each_batch is not None:
                batches = _supported(batches, check_each_batch)
            try:
                train_elbo = _train_epoch(svi, batches, size, schedule)
                break
            except FloatingPointError as fault:
                if last_good is None or history.rollbacks >= MAX_ROLLBACKS:
                    raise
                history.rollbacks += 1
                warnings.warn(f"{fault}; {last_good.roll_back()}", RuntimeWarning, stacklevel=2)
        if last_good is not None:
            last_good.save()
        val_elbo = elbo(model, guide, x_val, y_val).mean().item() if x_val is not None else math.nan
        train_elbo, val_elbo = parallel.mean_over_processes(train_elbo), parallel.mean_over_processes(val_elbo)
        history.append(epoch, train_elbo, val_elbo, kl_handler.weight, time.perf_counter() - start)
        bar.set_postfix(train_elbo=f"{train_elbo:.3f}", val_elbo=f"{val_elbo:.3f}")
        if best.update(epoch, val_elbo):
            history.best_epoch = epoch
        elif patience is not None and history.best_epoch is not None and epoch - history.best_epoch >= patience:
            history.stopped_early = True
        if on_epoch_end is not None:
            on_epoch_end(_state(epoch, svi, history, best, generator))
        spent = parallel.max_over_processes(history.wall_time) if distributed else history.wall_time
        if history.stopped_early or (max_minutes is not None and spent >= 60 * max_minutes):
            break
    best.restore()
    return history


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
    """Put the loop where ``state`` left it; returns the next epoch."""
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


def _train_epoch(svi: Stepper, batches: Iterator, size: int, schedule: _KLSchedule) -> float:
    """One pass of SVI steps; returns the mean training objective per datum."""
    total, steps = 0.0, 0
    for step, (x, y) in enumerate(batches):
        schedule.set(step)
        where = f"at epoch {schedule.epoch}, step {step + 1}"
        try:
            step_loss = svi.step(x, y=y, size=size)
        except ValueError:
            # Distribution argument checks reject NaN parameters before any loss is computed.
            broken = _nonfinite_parameters()
            if broken:
                raise FloatingPointError(f"parameters {broken[:3]} became non-finite {where}; {REMEDIES}") from None
            raise
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"the loss became {step_loss} {where}; {REMEDIES}")
        total, steps = total + step_loss, steps + 1
    broken = _nonfinite_parameters()
    if broken:  # the epoch's last step can break the parameters and still report a finite loss
        raise FloatingPointError(f"parameters {broken[:3]} became non-finite in epoch {schedule.epoch}; {REMEDIES}")
    return -total / (size * steps)


def _nonfinite_parameters() -> list[str]:
    return [name for name, value in _named_parameters().items() if not value.isfinite().all()]


class _LastGood:
    """Every parameter in Pyro's store and the optimizer state at the end of the last completed
    epoch, to roll back to after a numerical fault."""

    def __init__(self, svi: Stepper) -> None:
        self.svi = svi
        self.save()  # after a resume, with the optimizer states still waiting for their first step

    def save(self) -> None:
        self.parameters = {name: value.detach().clone() for name, value in _named_parameters().items()}
        self.optimizer = copy.deepcopy(self.svi.optim.get_state())

    def roll_back(self) -> str:
        """Restore the saved state and halve the learning rate; says what it did."""
        _copy_into(self.parameters)
        optim = self.svi.optim
        lr = optim.lr * ROLLBACK_LR_FACTOR  # the current rate: a second fault in one epoch halves it again
        optim.restart(copy.deepcopy(self.optimizer))
        optim.lr = lr
        return f"rolled back to the last completed epoch with the learning rate lowered to {lr:.3g}"


class _BestEpoch:
    """The best validation ELBO so far and, for early stopping, a copy of the parameters then
    (by parameter-store name)."""

    def __init__(self, keep_parameters: bool) -> None:
        self.keep_parameters = keep_parameters
        self.val_elbo = -math.inf
        self.parameters: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, val_elbo: float) -> bool:
        if not val_elbo > self.val_elbo:
            return False
        self.val_elbo = val_elbo
        if self.keep_parameters:
            self.parameters = {name: value.detach().clone() for name, value in _named_parameters().items()}
        return True

    def restore(self) -> None:
        if self.parameters is not None:
            _copy_into(self.parameters)


def _to_device(data: Data, device: torch.device) -> Data:
    """Tensors move to ``device``; a ``Dataset`` stays where it is (its batches are moved)."""
    if isinstance(data, Dataset):
        return data
    x, y = _unpack(data)
    return x.to(device), None if y is None else y.to(device)
