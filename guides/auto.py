"""An automatic amortized guide: q(z | x) built from the model itself.

Pyro's AutoGuides (:mod:`pyro.infer.autoguide`) learn one set of variational parameters per latent
value: for the per-datum latent variables of a VAE that is one q(z) per training row, which cannot
score a datum it has not seen. :class:`AutoAmortizedNormal` reads the model's per-datum latent
sites the way an AutoGuide does (by tracing the model once) and puts one encoder network behind
all of them instead (amortized inference, Kingma & Welling 2014): every site is a diagonal Normal
in unconstrained space pushed into the site's support (as ADVI does, Kucukelbir et al. 2017), with
its location and scale computed from ``x`` (and the labels ``y``)::

    from pyro_vae.guides import AutoAmortizedNormal

    guide = AutoAmortizedNormal(model, hidden=(256,))
    pyro_vae.fit(model, guide, x_train, epochs=30)

:func:`pyro_vae.program.check_amortized` rejects Pyro's non-amortized AutoGuides and points here.

References: Kingma & Welling (2014), "Auto-encoding variational Bayes"; Kucukelbir, Tran,
Ranganath, Gelman & Blei (2017), "Automatic differentiation variational inference", JMLR 18.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from pyro.poutine.util import prune_subsample_sites
from torch import nn
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import IndependentTransform, Transform
from torch.nn.functional import one_hot, softplus

from pyro_vae.convention import DEFAULT, MISSING_LABEL, Convention
from pyro_vae.distributions import ReparameterizedNormal
from pyro_vae.nets import MLP
from pyro_vae.program import Bound, bind

GLOBAL_SITES = ("error", "normal", "skip")
GLOBAL_INIT_SCALE = 0.1  # the initial scale of a global site's Normal, as in Pyro's AutoNormal
HAND_WRITTEN = (
    "write a guide for them (or use pyro.infer.autoguide.AutoNormal on the model with those sites exposed) "
    "and call it together with AutoAmortizedNormal(model, global_sites='skip'), "
    "or pass global_sites='normal' for a mean-field Normal with learned, non-amortized parameters"
)


@dataclass(frozen=True)
class _Plate:
    """A vectorized plate of the model that the guide enters again."""

    name: str
    size: int
    dim: int


@dataclass(frozen=True)
class _Site:
    """How one latent site of the model is laid out in the guide.

    ``batch_shape`` is the model's batch shape of the site, with the data dimension at
    ``data_position`` (``None`` for a global site); ``offset`` is where its unconstrained values
    start in the encoder's output.
    """

    name: str
    batch_shape: tuple[int, ...]
    data_position: int | None
    unconstrained_event_shape: tuple[int, ...]
    transform: Transform | None  # None: the site is real-valued and q is a plain Normal
    plates: tuple[_Plate, ...]
    offset: int

    @property
    def per_datum_shape(self) -> tuple[int, ...]:
        """The unconstrained shape of one datum's value (of the whole value, for a global site)."""
        batch = list(self.batch_shape)
        if self.data_position is not None:
            del batch[self.data_position]
        return (*batch, *self.unconstrained_event_shape)

    @property
    def coordinates(self) -> int:
        """The number of unconstrained values per datum (of the whole site, for a global one)."""
        return math.prod(self.per_datum_shape)


def _unwrap_independent(constraint: constraints.Constraint) -> constraints.Constraint:
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint


def _constant_bounds(constraint: constraints.Constraint, name: str) -> constraints.Constraint:
    """``constraint`` with tensor bounds (``Uniform(0, 1)`` expanded over the data, say) reduced to
    scalars, so that its transform applies to any batch; bounds that vary are not supported."""
    if isinstance(constraint, constraints.independent):
        base = _constant_bounds(constraint.base_constraint, name)
        if base is constraint.base_constraint:
            return constraint
        return constraints.independent(base, constraint.reinterpreted_batch_ndims)
    tensors = {key: value for key, value in vars(constraint).items() if isinstance(value, torch.Tensor)}
    if not tensors:
        return constraint
    reduced = copy.copy(constraint)
    for key, value in tensors.items():
        flat = value.detach().reshape(-1)
        if flat.numel() and not (flat == flat[0]).all():
            raise ValueError(
                f"the support of latent site {name!r} ({constraint}) has bounds that vary from value to value; "
                "AutoAmortizedNormal reads a site's support once and supports only the same bounds for every value: "
                "write a guide for this site"
            )
        setattr(reduced, key, flat[0] if flat.numel() else value)
    return reduced


def _site_transform(site: dict) -> tuple[Transform | None, tuple[int, ...]]:
    """The bijection from unconstrained space onto the site's support (``None`` for the real
    line) and the unconstrained event shape."""
    fn = site["fn"]
    support = fn.support
    if constraints.is_dependent(support):
        raise ValueError(f"latent site {site['name']!r} has a support that depends on unknown parameters ({support})")
    support = _constant_bounds(support, site["name"])
    event_shape = tuple(fn.event_shape)
    if _unwrap_independent(support) is constraints.real:
        return None, event_shape
    try:
        transform = biject_to(support)
    except NotImplementedError:
        raise ValueError(
            f"latent site {site['name']!r} has the support {support}, which torch.distributions.biject_to cannot "
            "map onto from unconstrained space; write a guide for this site"
        ) from None
    event_dim = len(event_shape)
    if transform.codomain.event_dim > event_dim:
        raise ValueError(
            f"latent site {site['name']!r} has event shape {event_shape}, fewer dimensions than its support "
            f"{support} needs ({transform.codomain.event_dim})"
        )
    if transform.codomain.event_dim < event_dim:
        transform = IndependentTransform(transform, event_dim - transform.codomain.event_dim)
    return transform, tuple(transform.inverse_shape(torch.Size(event_shape)))


def _site_plates(site: dict, data_plate: str) -> tuple[_Plate, ...]:
    plates = []
    for frame in site["cond_indep_stack"]:
        if not frame.vectorized or frame.name == data_plate:
            continue
        full_size = frame.size if frame.full_size is None else frame.full_size
        if frame.size != full_size:
            raise ValueError(
                f"latent site {site['name']!r} is in pyro.plate({frame.name!r}, {full_size}) subsampled to "
                f"{frame.size}: AutoAmortizedNormal does not support subsampled plates other than "
                f"{data_plate!r}; write a guide for this site"
            )
        plates.append(_Plate(frame.name, frame.size, frame.dim))
    return tuple(plates)


def _data_frame(site: dict, data_plate: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate and frame.vectorized:
            return frame
    return None


def _num_classes(trace, label_site: str) -> int | None:
    """The number of classes of the model's label site, when its support is ``0 .. n - 1``."""
    site = trace.nodes.get(label_site)
    if site is None or site["type"] != "sample":
        return None
    support = _unwrap_independent(site["fn"].support)
    lower, upper = getattr(support, "lower_bound", None), getattr(support, "upper_bound", None)
    if support.is_discrete and lower == 0 and upper is not None:
        return int(upper) + 1
    return None


class AutoAmortizedNormal(PyroModule):
    """An automatic amortized mean-field guide for any model that follows the pyro_vae convention.

    On its first call it traces the model on that data (through :func:`pyro_vae.program.bind`, with
    Pyro's random state, blocked from any handler outside and without gradients) and finds the
    latent sample sites inside the data plate: unobserved, not auxiliary, continuous, with any
    event shape and any support that :func:`torch.distributions.biject_to` maps onto (positive,
    unit interval, simplex, ...), also inside further plates nested in the data plate. It then
    builds one MLP encoder, on ``x``'s device and in its floating-point type, that maps a datum
    (flattened, with its labels) to a location and a scale ``softplus(raw) + min_scale`` for every
    unconstrained coordinate of all those sites. Every call samples the sites in the model's order,
    each in ``pyro.plate(data_plate, size, subsample=x)`` (and the model's nested plates), as

    .. math::

        q(z_s \\mid x) = T_s\\#\\,\\mathcal N\\bigl(\\mu_s(x), \\operatorname{diag}\\sigma_s(x)^2\\bigr),

    with :math:`T_s` = ``biject_to(support)`` (a plain Normal for real-valued sites). The model
    must draw the same sites with the same shapes (apart from the number of data) on every call.

    Labels: a floating-point ``y`` (one-hot, or any features) enters the encoder as it is; integer
    class labels ``y`` of shape ``[batch]`` are one-hot encoded, with ``num_classes`` or the number
    of classes of the model's label site (a ``Categorical``). Missing labels are not supported:
    there is no q(y | x); use :class:`~pyro_vae.guides.ConditionalNormal`.

    Not supported (a clear :class:`ValueError` on the first call): discrete latent sites in the
    data plate (write a guide that enumerates them), plates nested in the data plate that are
    subsampled, supports whose bounds vary from value to value, and by default latent sites outside
    the data plate (see ``global_sites``).

    A state dict holds the encoder (and the global parameters); it loads into a guide that has been
    called once on data (``guide(x[:2])``), which builds the networks to load into.

    :param model: the Pyro model, any signature :func:`pyro_vae.program.bind` accepts.
    :param hidden: the encoder's hidden layer widths, from the input inwards.
    :param float min_scale: floor on every scale in unconstrained space.
    :param convention: the names of the data plate and the label site (default :class:`Convention`).
    :param num_classes: the number of classes of integer labels ``y``; ``None`` reads it from the
        model's label site.
    :param str activation: the encoder's activation (see :class:`pyro_vae.nets.MLP`).
    :param str global_sites: latent sites outside the data plate: ``"error"`` (the default: raise,
        with what to do instead), ``"normal"`` (a mean-field Normal in unconstrained space with
        learned parameters, not amortized: Pyro's AutoNormal; its location starts at 0 in
        unconstrained space, its scale at 0.1) or ``"skip"`` (leave them to another guide that the
        user calls together with this one).
    """

    def __init__(
        self,
        model: Callable,
        *,
        hidden: Sequence[int] = (256,),
        min_scale: float = 1e-4,
        convention: Convention | None = None,
        num_classes: int | None = None,
        activation: str = "relu",
        global_sites: str = "error",
    ) -> None:
        if global_sites not in GLOBAL_SITES:
            raise ValueError(f"global_sites must be one of {GLOBAL_SITES}, got {global_sites!r}")
        if min_scale <= 0:
            raise ValueError(f"min_scale must be positive, got {min_scale}")
        super().__init__()
        self._model: Bound = bind(model)  # a Bound, not an nn.Module: the model's parameters are not the guide's
        self.hidden = tuple(hidden)
        self.min_scale = min_scale
        self.convention = convention or DEFAULT
        self.num_classes = num_classes
        self.activation = activation
        self.global_sites = global_sites
        self._sites: tuple[_Site, ...] | None = None
        self._x_shape: tuple[int, ...] = ()
        self._label_kind: str | None = None  # None (no labels), "features" or "classes"
        self._label_width = 0
        self._data_dim = -1
        self._coordinates = 0

    # ---------------------------------------------------------------- set-up

    @property
    def is_set_up(self) -> bool:
        """Whether the guide has traced the model and built its networks (on its first call)."""
        return self._sites is not None

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """The names of the model's latent sites this guide samples, in the model's order."""
        if self._sites is None:
            raise RuntimeError("AutoAmortizedNormal finds the model's latent sites on its first call; call it on data")
        return tuple(site.name for site in self._sites)

    def _setup(self, x: torch.Tensor, y: torch.Tensor | None, size: int) -> None:
        with torch.no_grad(), poutine.block():
            trace = prune_subsample_sites(poutine.trace(self._model).get_trace(x, y, size=size))
        data_plate = self.convention.data_plate
        sites: list[_Site] = []
        offset = 0
        data_dims = set()
        globals_found = []
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site["infer"].get("is_auxiliary"):
                continue
            frame = _data_frame(site, data_plate)
            if frame is None and self.global_sites != "normal":
                globals_found.append(name)
                continue
            if site["fn"].support.is_discrete or site["infer"].get("enumerate"):
                where = "inside" if frame is not None else "outside"
                raise ValueError(
                    f"latent site {name!r} ({type(site['fn']).__name__}, {where} the data plate) is discrete; "
                    "AutoAmortizedNormal samples continuous sites only: write a guide for it that enumerates "
                    "it (infer={'enumerate': 'parallel'}, trained with loss='enum'), e.g. "
                    "pyro_vae.guides.ConditionalNormal for a missing label"
                )
            transform, event_shape = _site_transform(site)
            batch_shape = tuple(site["fn"].batch_shape)
            position = None
            if frame is not None:
                data_dims.add(frame.dim)
                position = len(batch_shape) + frame.dim
                if position < 0 or batch_shape[position] != x.shape[0]:
                    raise ValueError(
                        f"latent site {name!r} has batch shape {batch_shape}, without the {x.shape[0]} data of plate "
                        f"{data_plate!r} at dimension {frame.dim}"
                    )
            layout = _Site(name, batch_shape, position, event_shape, transform, _site_plates(site, data_plate), offset)
            sites.append(layout)
            if frame is not None:
                offset += layout.coordinates
        if globals_found and self.global_sites == "error":
            raise ValueError(
                f"latent sites {globals_found} of the model are outside pyro.plate({data_plate!r}, ...): global "
                "variables, which an amortized guide does not infer; " + HAND_WRITTEN
            )
        if offset == 0:
            raise ValueError(
                f"the model has no continuous latent site inside pyro.plate({data_plate!r}, ...): nothing to amortize "
                "(for global latent variables only, use pyro.infer.autoguide.AutoNormal)"
            )
        if len(data_dims) > 1:
            raise ValueError(f"the model's latent sites use plate {data_plate!r} at different dimensions {data_dims}")
        self._data_dim = data_dims.pop()
        self._x_shape = tuple(x.shape[1:])
        self._setup_labels(trace, y, x.shape[0])
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        in_features = math.prod(self._x_shape) + self._label_width
        encoder = MLP(in_features, self.hidden, 2 * offset, self.activation).to(device=x.device, dtype=dtype)
        global_loc, global_scale = nn.ParameterList(), nn.ParameterList()
        raw_init = math.log(math.expm1(GLOBAL_INIT_SCALE))  # softplus(raw_init) = GLOBAL_INIT_SCALE
        for site in sites:
            if site.data_position is None:
                shape = site.per_datum_shape
                global_loc.append(nn.Parameter(torch.zeros(shape, device=x.device, dtype=dtype)))
                global_scale.append(nn.Parameter(torch.full(shape, raw_init, device=x.device, dtype=dtype)))
        self.encoder = encoder
        if len(global_loc):
            self.global_loc = global_loc
            self.global_raw_scale = global_scale
        self._coordinates = offset
        self._sites = tuple(sites)

    def _setup_labels(self, trace, y: torch.Tensor | None, rows: int) -> None:
        if y is None:
            return
        if y.shape[:1] != (rows,):
            raise ValueError(f"expected labels y with one row per datum ({rows}), got shape {tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool or y.dim() > 1:
            self._label_kind = "features"
            self._label_width = math.prod(y.shape[1:])
            return
        num_classes = self.num_classes or _num_classes(trace, self.convention.label_site)
        if num_classes is None:
            raise ValueError(
                "integer class labels y need their number of classes for the encoder's one-hot input, and the "
                f"model's label site {self.convention.label_site!r} does not tell it: pass "
                "AutoAmortizedNormal(model, num_classes=...) or one-hot float labels"
            )
        self._label_kind = "classes"
        self._label_width = num_classes

    # ---------------------------------------------------------------- encoder

    def _features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if tuple(x.shape[1:]) != self._x_shape:
            raise ValueError(
                f"AutoAmortizedNormal was set up for data of shape [batch, *{self._x_shape}], got {tuple(x.shape)}"
            )
        dtype = self.encoder[0].weight.dtype
        features = x.reshape(x.shape[0], -1).to(dtype)
        if self._label_kind is None:
            if y is not None:
                raise ValueError("AutoAmortizedNormal was set up without labels, but labels y were given")
            return features
        if y is None:
            raise ValueError("AutoAmortizedNormal was set up with labels y (its encoder reads them); pass them")
        if y.shape[:1] != x.shape[:1]:
            raise ValueError(f"expected labels y with one row per datum ({x.shape[0]}), got shape {tuple(y.shape)}")
        if self._label_kind == "features":
            labels = y.reshape(y.shape[0], -1).to(dtype)
            if labels.shape[1] != self._label_width:
                raise ValueError(f"expected labels of {self._label_width} features per datum, got {labels.shape[1]}")
            if labels.isnan().any():
                raise ValueError(
                    "labels y have missing (NaN) rows; AutoAmortizedNormal has no q(y | x) to guess them: use "
                    "pyro_vae.guides.ConditionalNormal for semi-supervised data"
                )
        else:
            if y.is_floating_point() or y.dim() != 1:
                raise ValueError(
                    f"expected integer class labels of shape [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}"
                )
            if (y == MISSING_LABEL).any():
                raise ValueError(
                    f"labels y have missing labels ({MISSING_LABEL}); AutoAmortizedNormal has no q(y | x) to guess "
                    "them: use pyro_vae.guides.ConditionalNormal for semi-supervised data"
                )
            outside = (y < 0) | (y >= self._label_width)
            if outside.any():
                raise ValueError(
                    f"labels {sorted(set(y[outside].tolist()))[:5]} are outside the classes 0..{self._label_width - 1}"
                )
            labels = one_hot(y, self._label_width).to(dtype)
        return torch.cat([features, labels], dim=-1)

    def _local_distributions(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, dist.TorchDistribution]:
        """q(z_s | x) of every site in the data plate, batch shape the model's (``[batch]`` at the
        data dimension), outside any plate."""
        loc, raw_scale = self.encoder(self._features(x, y)).split(self._coordinates, dim=-1)
        scale = softplus(raw_scale) + self.min_scale
        rows = x.shape[0]
        distributions = {}
        for site in self._sites:
            if site.data_position is None:
                continue
            parts = [
                part[:, site.offset : site.offset + site.coordinates]
                .reshape(rows, *site.per_datum_shape)
                .movedim(0, site.data_position)
                for part in (loc, scale)
            ]
            distributions[site.name] = self._pushed(site, *parts)
        return distributions

    @staticmethod
    def _pushed(site: _Site, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        normal = ReparameterizedNormal(loc, scale).to_event(len(site.unconstrained_event_shape))
        if site.transform is None:
            return normal
        # Cached: the density of a draw uses the exact unconstrained value instead of inverting the
        # transform (a sigmoid rounded to 1 has no finite inverse).
        return dist.TransformedDistribution(normal, site.transform.with_cache(1))

    # ---------------------------------------------------------------- the guide

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dist.TorchDistribution:
        """q(z | x) of the model's first latent site in the data plate, batched over the data (the
        guide must have been called once; ``.mean`` exists for real-valued sites)."""
        if self._sites is None:
            raise RuntimeError("AutoAmortizedNormal is set up on its first call; call it once on data first")
        return next(iter(self._local_distributions(x, y).values()))

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, size: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Sample every latent site of the model; returns the values by site name."""
        if x is None:
            raise ValueError("AutoAmortizedNormal is an encoder q(z | x): it needs data x")
        if size is None:
            size = x.shape[0]
        if self._sites is None:
            self._setup(x, y, size)
        distributions = self._local_distributions(x, y)
        plates: dict[str, pyro.plate] = {}
        for site in self._sites:
            for plate in site.plates:
                if plate.name not in plates:
                    plates[plate.name] = pyro.plate(plate.name, plate.size, dim=plate.dim)
        data = pyro.plate(self.convention.data_plate, size, subsample=x, dim=self._data_dim)
        values = {}
        global_index = 0
        for site in self._sites:
            with contextlib.ExitStack() as stack:
                if site.data_position is not None:
                    stack.enter_context(data)
                    fn = distributions[site.name]
                else:
                    fn = self._pushed(
                        site,
                        self.global_loc[global_index],
                        softplus(self.global_raw_scale[global_index]) + self.min_scale,
                    )
                    global_index += 1
                for plate in site.plates:
                    stack.enter_context(plates[plate.name])
                values[site.name] = pyro.sample(site.name, fn)
        return values

    # ---------------------------------------------------------------- checkpoints

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        if self._sites is None and any(key.startswith(prefix) for key in state_dict):
            raise RuntimeError(
                "AutoAmortizedNormal builds its encoder when it is first called, from the model's latent sites and "
                "the data's shape: call the guide once on data (e.g. guide(x[:2])) before loading a state dict"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)
