"""Pyro programs as they are written: calling them, and inspecting them once.

pyro_vae calls every model and guide as ``program(x, y, size=N)``: the data, the labels and the
number of data the data plate stands for. Programs written for Pyro take what they need of that:
``model(x)``, ``model(xs, ys=None)``, ``forward(self, x, y=None, size=None)``. :func:`bind` reads
the signature once and returns a callable with pyro_vae's signature that passes each argument
only where the program has a place for it. A program without a ``size`` parameter (its plate is
``pyro.plate("data", len(x))`` or ``pyro.plate("data")``) gets what the plate's ``size`` would
have done: the densities of the sites inside the data plate are scaled by ``N / len(x)``, as
:class:`pyro.infer.SVI` needs for a minibatch (Hoffman et al. 2013); sites outside it are not.

:func:`inspect_pair` traces a model/guide pair once on a batch and returns what training, scoring
and the latent tools need to know about it (:class:`Inspection`).
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoCallable, AutoGuide, AutoGuideList, AutoMessenger
from pyro.poutine.guide import GuideMessenger
from pyro.poutine.messenger import Messenger, unwrap
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_vae.convention import DATA_PLATE, DEFAULT, OBSERVED_SITE, Convention

SIZE = "size"
LABELS = "y"


class _ScaleToData(Messenger):
    """Scale the sites inside the data plate by ``size / rows`` where the plate stands for the
    batch alone (``pyro.plate(name, len(x))``, with or without ``subsample_size``, or
    ``pyro.plate(name)``); a plate that states its own full size (``pyro.plate(name, N,
    subsample=x)``) scales itself, as in :class:`pyro.infer.SVI`."""

    def __init__(self, plate: str, size: int, rows: int) -> None:
        super().__init__()
        self.plate, self.rows, self.factor = plate, rows, size / rows

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample":
            return
        frame = data_frame(msg, self.plate)
        if frame is not None and not scales_itself(frame, self.rows):
            msg["scale"] = self.factor * msg["scale"]


def scales_itself(frame, rows: int) -> bool:
    """Whether a data plate's frame states a full size of its own, other than the ``rows`` it
    holds (``pyro.plate(name, N, subsample=x)``): it then scales its sites by N / rows itself, as
    in :class:`pyro.infer.SVI`; a plate that stands for the batch alone (``pyro.plate(name,
    len(x))``, ``pyro.plate(name)``) leaves the scaling to :func:`bind`."""
    return (frame.full_size if frame.full_size is not None else frame.size) not in (rows, -1)


@dataclass(frozen=True)
class Bound:
    """A program with pyro_vae's calling convention ``bound(x, y=None, size=None)``.

    :param program: the model or guide as written.
    :param str labels: how it takes labels: ``"keyword"`` (a parameter named ``y``, or
        ``**kwargs``), ``"positional"`` (its second positional parameter, as in ``model(xs, ys)``)
        or ``"none"``.
    :param bool takes_size: whether it has a ``size`` parameter (or ``**kwargs``).
    :param str data_plate: the plate to scale to ``size`` data when it does not take ``size``.
    """

    program: Callable
    labels: str
    takes_size: bool
    data_plate: str = DATA_PLATE

    def __call__(self, x: torch.Tensor | None, y: torch.Tensor | None = None, size: int | None = None):
        args, kwargs = self._arguments(x, y, size)
        rows = x.shape[0] if x is not None else size
        scale = size is not None and not self.takes_size and rows != size
        composite = isinstance(unwrap(self.program), AutoGuideList)
        if not (scale or composite):
            return self.program(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            if scale:
                stack.enter_context(_ScaleToData(self.data_plate, size, rows))
            if composite:
                stack.enter_context(_OnePlateSite(self.data_plate, rows))
            return self.program(*args, **kwargs)

    def _arguments(self, x: torch.Tensor | None, y: torch.Tensor | None, size: int | None) -> tuple[list, dict]:
        """The positional and keyword arguments the program takes of ``x``, ``y`` and ``size``."""
        args: list = [x]
        kwargs: dict = {}
        if y is not None:
            if self.labels == "none":
                raise TypeError(f"{_name(self.program)} takes no labels, but labels y were given")
            if self.labels == "positional":
                args.append(y)
            else:
                kwargs[LABELS] = y
        if size is not None and self.takes_size:
            kwargs[SIZE] = size
        return args, kwargs


def _stands_for_batch(msg: dict, rows: int | None) -> bool:
    """Whether a plate's subsample site holds ``rows`` data given by the caller (an explicit
    ``subsample``, or the whole of a plate of ``rows``), not a random subsample of another size."""
    if rows is None:
        return True
    if msg["value"] is not None:
        return len(msg["value"]) == rows
    fn = msg["fn"]
    return fn.size == rows and fn.subsample_size in (None, rows)


class _OnePlateSite(Messenger):
    """Let one subsample site per plate reach the trace in a call of an :class:`AutoGuideList`.

    The list creates a plate for every plate its model samples in (the data plate as long as on
    its first call), and a part that is no AutoGuide (an amortized guide such as
    :class:`~pyro_vae.guides.AutoAmortizedNormal`, which the list wraps in an ``AutoCallable`` and
    does not hand its plates) creates the plates it samples in again: a trace takes one site per
    name. The data plate's site kept is the first that holds this batch's ``rows``; the list's own
    random subsample of its first call's length is hidden too, for the model replays the guide's.
    """

    def __init__(self, data_plate: str, rows: int | None) -> None:
        super().__init__()
        self.data_plate, self.rows = data_plate, rows
        self.seen: set[str] = set()

    def __enter__(self):
        self.seen = set()
        return super().__enter__()

    def _process_message(self, msg: dict) -> None:
        if not site_is_subsample(msg):
            return
        name = msg["name"]
        if name in self.seen or (name == self.data_plate and not _stands_for_batch(msg, self.rows)):
            msg["stop"] = True  # drawn, but hidden from the trace and every handler outside
        else:
            self.seen.add(name)


def _name(program: Callable) -> str:
    return getattr(unwrap(program), "__qualname__", type(program).__name__)


def _signature(program: Callable) -> inspect.Signature | None:
    target = unwrap(program)
    if isinstance(target, nn.Module):
        target = target.forward
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # a builtin or C callable: call it with everything
        return None


def _guided_model(program: Callable) -> Callable | None:
    """The model that one of Pyro's AutoGuides (or effect-based guides) passes its arguments on
    to, or ``None`` for any other program."""
    target = unwrap(program)
    if not isinstance(target, (AutoGuide, GuideMessenger)):
        return None
    try:
        return target.model
    except TypeError:  # unpickled: the reference to the model is dropped
        return None


def _calling(program: Callable) -> tuple[str, bool]:
    """How ``program`` takes labels and whether it takes ``size`` (see :class:`Bound`), read off its
    signature; an AutoGuide's ``forward(*args, **kwargs)`` takes what its model takes."""
    model = _guided_model(program)
    if model is not None:
        return _calling(model)
    signature = _signature(program)
    if signature is None:
        return "keyword", True
    parameters = list(signature.parameters.values())
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in parameters)
    names = {p.name for p in parameters}
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if LABELS in names or (var_keyword and len(positional) < 2):
        labels = "keyword"
    elif len(positional) >= 2 and positional[1].name != SIZE:
        labels = "positional"
    else:
        labels = "none"
    return labels, SIZE in names or var_keyword


def bind(program: Callable, data_plate: str = DATA_PLATE) -> Bound:
    """``program`` with pyro_vae's calling convention (returned unchanged if it already is one).

    One of Pyro's AutoGuides (``AutoNormal(model)``, an ``AutoGuideList``) is called as its model is.
    """
    if isinstance(program, Bound):
        return program
    labels, takes_size = _calling(program)
    return Bound(program, labels, takes_size, data_plate)


def data_frame(site: dict, plate: str):
    """The vectorized frame of the plate named ``plate`` around ``site``, or ``None``."""
    for frame in site["cond_indep_stack"]:
        if frame.name == plate and frame.vectorized:
            return frame
    return None


def sample_sites(trace: Trace) -> dict[str, dict]:
    """The sample sites of a trace other than the plates' subsample sites, by name."""
    return {
        name: site for name, site in trace.nodes.items() if site["type"] == "sample" and not site_is_subsample(site)
    }


def latent_sites(trace: Trace) -> dict[str, dict]:
    """The latent (unobserved, non-auxiliary) sample sites of a trace, by name."""
    return {
        name: site
        for name, site in sample_sites(trace).items()
        if not site["is_observed"] and not site["infer"].get("is_auxiliary")
    }


@dataclass(frozen=True)
class Inspection:
    """What one trace of a model/guide pair on a batch of data tells, for every part of pyro_vae
    that needs it: which site observes the data, how deep the plates nest, which latent sites are
    per-datum and which global, which parameters the pair owns, and the likelihood's support.

    Made by :func:`inspect_pair`; ``model_trace`` and ``guide_trace`` are the traces themselves
    (the model replaying the guide), for estimators that check more.
    """

    model: Bound
    guide: Bound
    convention: Convention
    observed_site: str
    plate_nesting: int
    local_latents: tuple[str, ...]
    global_latents: tuple[str, ...]
    model_latents: tuple[str, ...]
    parameter_names: frozenset[str]
    support: constraints.Constraint | None
    family: str
    model_trace: Trace
    guide_trace: Trace

    def parameters(self) -> dict[str, torch.Tensor]:
        """The pair's (unconstrained) tensors in Pyro's parameter store, by name."""
        store = pyro.get_param_store()
        return {name: store._params[name] for name in sorted(self.parameter_names) if name in store._params}

    def check_support(self, x: torch.Tensor) -> None:
        """Raise a clear error when ``x`` lies outside the support of the model's likelihood
        (nothing is checked when the program built its likelihood with ``validate_args=False``)."""
        if self.support is not None:
            check_support(self.support, x, self.family)

    def require_whole_batch(self, rows: int) -> None:
        """Per-datum scores need the data plate to hold every one of the ``rows`` data it was given:
        a program that subsamples them itself (``pyro.plate("data", N, subsample_size=b)``) scores
        b data of its choosing, which are not the rows of ``x``."""
        plate = self.convention.data_plate
        for trace in (self.model_trace, self.guide_trace):
            for name, site in sample_sites(trace).items():
                frame = data_frame(site, plate)
                if frame is not None and frame.size not in (rows, -1):
                    raise ValueError(
                        f"site {name!r} is in pyro.plate({plate!r}) of {frame.size} data, but the program was given "
                        f"{rows}: it subsamples the data plate itself (subsample_size=...), so per-datum scores are "
                        f"undefined; let the caller pass the batch: pyro.plate({plate!r}, size, subsample=x) (or "
                        f"pyro.plate({plate!r}, len(x)))"
                    )

    def require_guide_covers_model(self) -> None:
        """Scores need every latent site of the model sampled by the guide."""
        missing = set(self.model_latents) - set(self.local_latents) - set(self.global_latents)
        if missing:
            raise ValueError(
                f"latent sites {sorted(missing)} of the model are not sampled by the guide; a score needs a "
                "proposal for each (add them to the guide)"
            )


def check_support(support: constraints.Constraint, data: torch.Tensor, family: str = "") -> None:
    """Raise a clear :class:`ValueError` if any of ``data`` lies outside ``support``."""
    inside = support.check(data)
    if inside.all():
        return
    outside = data[~inside] if inside.shape == data.shape else data.reshape(-1)[:0]
    examples = f", e.g. the values {sorted(set(outside[:1000].tolist()))[:5]}" if outside.numel() else ""
    raise ValueError(
        f"the data lie outside the support of the model's likelihood{' ' + family if family else ''} "
        f"({support}){examples}; "
        "binarize them (e.g. x > 0.5) or choose a likelihood for these values (continuous-bernoulli for [0, 1], "
        "gaussian for any real); a program that means to score such values builds its likelihood with "
        "validate_args=False"
    )


def trace_pair(model: Callable, guide: Callable, x, y, size) -> tuple[Trace, Trace]:
    """The guide's trace and the model's, replaying the guide's draws, on one call."""
    guide_trace = poutine.trace(guide).get_trace(x, y, size=size)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y, size=size)
    return model_trace, guide_trace


def _trace_pair(model: Bound, guide: Bound, x, y, size) -> tuple[Trace, Trace, Trace]:
    with poutine.block(), poutine.trace(param_only=True) as params:
        model_trace, guide_trace = trace_pair(model, guide, x, y, size)
    return model_trace, guide_trace, params.trace


def _stale_parameters(params: Trace) -> list[str]:
    """Names whose stored tensor is not the ``nn.Parameter`` the program registers under them: a
    previous model's left in Pyro's store (``pyro.module`` would hand SVI the old tensor)."""
    return [
        name
        for name, site in params.nodes.items()
        if len(site["args"]) > 1
        and isinstance(site["args"][1], nn.Parameter)
        and site["value"].unconstrained() is not site["args"][1]
    ]


def _traces_owning_parameters(model: Bound, guide: Bound, x, y, size) -> tuple[Trace, Trace, Trace]:
    store = pyro.get_param_store()
    for attempt in range(2):
        traced = _trace_pair(model, guide, x, y, size)
        stale = _stale_parameters(traced[2])
        if not stale:
            return traced
        if attempt == 1:
            names = [name.replace("$$$", ".") for name in stale]
            raise ValueError(
                f"parameter names {names} are used by two different tensors (do the model and the guide "
                "have submodules with the same attribute name?); give them distinct names"
            )
        for name in stale:
            del store[name]
    raise AssertionError("unreachable")


def holds_no_data(site: dict) -> bool:
    """Whether a sample site is a ``pyro.deterministic`` record (an observed Delta) or auxiliary:
    neither is ever the data."""
    return bool(site["infer"].get("_deterministic") or site["infer"].get("is_auxiliary"))


def _observes(site: dict) -> bool:
    """Whether a sample site observes data: observed, and not a record or auxiliary."""
    return site["is_observed"] and not holds_no_data(site)


def observed_site(model_trace: Trace, convention: Convention = DEFAULT, exclude: str | None = None) -> str:
    """The name of the model's site that observes the data (see :class:`~pyro_vae.convention.Convention`)."""
    if convention.observed_site is not None:
        name = convention.observed_site
        site = model_trace.nodes.get(name)
        if site is None or site["type"] != "sample" or not _observes(site):
            raise ValueError(
                f"the model has no observed sample site named {name!r} (a pyro.deterministic or auxiliary site "
                "does not observe the data)"
            )
        return name
    observed = [
        name
        for name, site in sample_sites(model_trace).items()
        if _observes(site) and name not in (convention.label_site, exclude)
    ]
    if OBSERVED_SITE in observed:
        return OBSERVED_SITE
    if len(observed) == 1:
        return observed[0]
    raise ValueError(
        f"cannot tell which observed site of the model holds the data (observed sites: {observed}); "
        "name it with convention=Convention(observed_site=...)"
    )


def plate_nesting(*traces: Trace) -> int:
    dims = [
        -frame.dim
        for trace in traces
        for site in sample_sites(trace).values()
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=1)


def _likelihood_support(site: dict) -> tuple[constraints.Constraint | None, str]:
    """The support to check the data against and the family's name; ``None`` when the program
    turned validation off for its likelihood or the support depends on the parameters."""
    fn = site["fn"]
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution)):
        fn = fn.base_dist
    if fn._validate_args is False or constraints.is_dependent(fn.support):
        return None, type(fn).__name__
    return fn.support, type(fn).__name__


def _is_unamortized(guide: Callable) -> bool:
    guide = unwrap(guide.program if isinstance(guide, Bound) else guide)
    if isinstance(guide, AutoGuideList):
        # A list that holds a callable (a hand-written or amortized guide) may leave the per-datum
        # sites to it; one of AutoGuides only does not.
        return not any(isinstance(part, AutoCallable) for part in guide)
    return isinstance(guide, (AutoGuide, AutoMessenger)) and not isinstance(guide, AutoCallable)


def check_amortized(guide: Callable, model_has_local_latents: bool) -> None:
    """Raise :class:`TypeError` for one of Pyro's AutoGuides as the guide of a model with latent
    sites in the data plate: an AutoGuide learns a variational parameter per latent value, one q(z)
    per training row, and cannot score new data.

    :param guide: the guide that is to be trained or used for scoring.
    :param bool model_has_local_latents: whether the model has latent sites in the data plate.
    """
    if model_has_local_latents and _is_unamortized(guide):
        name = type(unwrap(guide.program if isinstance(guide, Bound) else guide)).__name__
        raise TypeError(
            f"{name} is not amortized: it learns one q(z) per training row and cannot score new data; "
            "use pyro_vae.guides.AutoAmortizedNormal(model), which encodes every datum with one network"
        )


def owning_modules(*programs: Callable) -> list[nn.Module]:
    """The ``nn.Module`` behind each program: the program itself, or the object of a bound method
    (``vae.model``), seen through :func:`~pyro_vae.program.bind` and Pyro's handlers."""
    modules: list[nn.Module] = []
    for program in programs:
        target = unwrap(program.program if isinstance(program, Bound) else program)
        owner = target if isinstance(target, nn.Module) else getattr(target, "__self__", None)
        if isinstance(owner, nn.Module) and all(owner is not module for module in modules):
            modules.append(owner)
    return modules


DTYPE_ERROR = re.compile(r"dtype|scalar type|input type", re.IGNORECASE)
DTYPE_NAMES = {"double": torch.float64, "float": torch.float32, "half": torch.float16, "bfloat16": torch.bfloat16}


def _program_dtype(model: Bound, guide: Bound, message: str, data_dtype: torch.dtype) -> torch.dtype | None:
    """The floating-point dtype the pair computes in: its modules' parameters', or else the other
    dtype torch's error names."""
    dtypes = {
        parameter.dtype
        for module in owning_modules(model, guide)
        for parameter in module.parameters()
        if parameter.is_floating_point() and parameter.dtype != data_dtype
    }
    if len(dtypes) == 1:
        return dtypes.pop()
    named = [DTYPE_NAMES[word] for word in re.findall(r"[a-z0-9]+", message.lower()) if word in DTYPE_NAMES]
    return next((dtype for dtype in named if dtype != data_dtype), None)


def _dtype_message(data_dtype: torch.dtype, dtype: torch.dtype | None, error: str) -> str:
    computes_in = dtype or "another floating-point dtype"
    to_data = _conversion("x", dtype) if dtype is not None else "x.float() for float32 networks"
    return (
        f"the data are {data_dtype} but the model or guide computes in {computes_in} ({error}); convert the "
        f"data with {to_data}, or the networks to the data's dtype with {_conversion('model', data_dtype)} and "
        f"{_conversion('guide', data_dtype)}"
    )


def _conversion(name: str, dtype: torch.dtype) -> str:
    method = {torch.float32: "float", torch.float64: "double", torch.float16: "half"}.get(dtype)
    return f"{name}.{method}()" if method else f"{name}.to({dtype})"


def inspect_pair(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    size: int | None = None,
    convention: Convention | None = None,
) -> Inspection:
    """Trace ``guide`` and ``model`` (replaying the guide) once on the batch ``x``, ``y`` with
    ``size`` data (default ``len(x)``) and return the :class:`Inspection`.

    The draws come from a fork of torch's random state: the caller's random stream is left as it
    was. Entries of Pyro's parameter store that belong to a previous program with the same names
    are replaced by the pair's own tensors. Data of one floating-point dtype and networks of
    another (float64 from NumPy, float32 networks) fail inside the program, in the first layer:
    that error is raised as a :class:`TypeError` naming both dtypes and the fix.
    """
    convention = convention or DEFAULT
    model, guide = bind(model, convention.data_plate), bind(guide, convention.data_plate)
    size = x.shape[0] if size is None else size
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            model_trace, guide_trace, params = _traces_owning_parameters(model, guide, x, y, size)
    except RuntimeError as error:  # data of one floating-point dtype, networks of another
        message = str(error).split("\n", 1)[0]
        if not DTYPE_ERROR.search(message):
            raise
        raise TypeError(_dtype_message(x.dtype, _program_dtype(model, guide, message, x.dtype), message)) from error
    observed = observed_site(model_trace, convention)
    if data_frame(model_trace.nodes[observed], convention.data_plate) is None:
        plates = sorted({f.name for f in model_trace.nodes[observed]["cond_indep_stack"]})
        raise ValueError(
            f"the model's observed site {observed!r} is not inside a vectorized pyro.plate({convention.data_plate!r}, "
            f"...) (its plates: {plates}); put the per-datum sites in that plate or name the plate with "
            "convention=Convention(data_plate=...)"
        )
    latents = latent_sites(guide_trace)
    local = tuple(name for name, site in latents.items() if data_frame(site, convention.data_plate) is not None)
    check_amortized(guide, bool(local))
    support, family = _likelihood_support(model_trace.nodes[observed])
    return Inspection(
        model=model,
        guide=guide,
        convention=convention,
        observed_site=observed,
        plate_nesting=plate_nesting(model_trace, guide_trace),
        local_latents=local,
        global_latents=tuple(name for name in latents if name not in local),
        model_latents=tuple(latent_sites(model_trace)),
        parameter_names=frozenset(params.nodes),
        support=support,
        family=family,
        model_trace=model_trace,
        guide_trace=guide_trace,
    )
