"""A captured training step: :class:`~pyro_vae.fast_svi.FastSVI`'s step recorded once per input
signature as a graph of tensor operations, then replayed without the Pyro program.

Much of a small VAE's training step on a CPU, and nearly all of it on a GPU, is Python: Pyro's
effect handlers, plates and parameter lookups run on every step to issue the same tensor
operations on tensors of the same shapes. :func:`torch.fx.experimental.proxy_tensor.make_fx`
records the operations the dispatcher sees while one real step runs, the backward pass
(``torch.autograd.grad``) and the fused Adam update included, as an FX graph (Reed et al. 2022,
"torch.fx: practical program capture and transformation for deep learning in Python"); replaying
the graph issues the same operations in the same order without the Python that chose them.

So that a replay is the step and not a copy of one moment of it, everything that changes between
steps is a graph input: the minibatch; the pair's parameters and the optimizer's moments and
step counts, read afresh on every replay (a rollback that replaces the optimizer's state is
followed); the learning rate and the KL weight, as 0-dimensional tensors; and the random draws,
which the graph takes from torch's global generator, as the eager step does. A replay gives the
eager step's loss and parameters bit for bit (``tests/test_captured_step.py``).

A signature (the shapes, dtypes and devices of the step's tensor arguments and the values of the
others) steps eagerly the first time it is seen, which gives every parameter it uses an optimizer
state; the second time, its step is recorded as it runs; from the third on, it is replayed. A
recording is discarded, and the signature left to the eager step, when the program reads a
tensor's value through PyTorch's dispatcher (``.item()``, ``bool()``, a branch on a tensor: a
graph would freeze what it decided, and ``make_fx`` refuses), when its graph holds an operation
whose output shape depends on values (boolean-mask indexing, ``nonzero``), or when it used a
parameter that its eager step did not. A refused recording puts the random state back, so that
the eager step draws what it would have (in-place effects of its forward pass, such as
BatchNorm's running statistics, happen twice on that one step). A replay whose parameters have
lost their optimizer state (a rollback to before their first step) steps eagerly, which makes
the state afresh.

What the graph cannot see it freezes: Python state the program reads (a counter, a global flag,
Python's ``random``), values read around the dispatcher (``.tolist()``, ``.numpy()``), and a
tensor attribute that is replaced by another between steps (one updated in place stays live). A
program whose operations change between calls with the same arguments must train uncaptured, as
``fit`` does by default. Of a stepper's signatures, the first :data:`MAX_SIGNATURES` are
recorded; later ones (an argument that changes on every step, say) step eagerly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae.kl_weight import KLWeightMessenger
from pyro_vae.resume import rng_state, set_rng_state

if TYPE_CHECKING:
    from pyro_vae.fast_svi import FastSVI

STATE_KEYS = ("exp_avg", "exp_avg_sq", "step")  # FusedAdam's state of one parameter
MAX_SIGNATURES = 16  # fit meets two: full minibatches and the last, shorter one


def signature(args: tuple, kwargs: dict) -> tuple:
    """What a step's graph depends on in its arguments."""

    def key(value):
        if isinstance(value, torch.Tensor):
            return "tensor", tuple(value.shape), value.stride(), value.dtype, value.device
        return "value", value

    return tuple(map(key, args)), tuple((name, key(value)) for name, value in sorted(kwargs.items()))


class _Recording:
    """One recorded step: its graph and the parameters it takes, in order."""

    def __init__(self, graph: torch.fx.GraphModule, parameters: list[torch.Tensor]) -> None:
        self.graph = graph
        self.parameters = parameters


class CapturedSteps:
    """The recorded steps of one :class:`~pyro_vae.fast_svi.FastSVI`, by :func:`signature`.

    :param fast_svi: the stepper whose step is recorded; it steps with
        :class:`~pyro_vae.optim.JointOptim` over :class:`~pyro_vae.optim.FusedAdam`, one particle
        and no gradient hook (:meth:`FastSVI.capture_refusal <pyro_vae.fast_svi.FastSVI>` checks).
    :param kl_weight: the KL-weight handler wrapped around the pair, if any: its weight is a graph
        input.
    """

    def __init__(self, fast_svi: FastSVI, kl_weight: KLWeightMessenger | None = None) -> None:
        self.fast_svi = fast_svi
        self.kl_weight = kl_weight
        self.recordings: dict[tuple, _Recording | None] = {}  # None: the signature steps eagerly
        self.eager_parameters: dict[tuple, list[torch.Tensor]] = {}  # what a signature's eager step used

    def step(self, args: tuple, kwargs: dict) -> float:
        """One training step, replayed, recorded or eager; returns its -ELBO."""
        key = signature(args, kwargs)
        try:
            recording = self.recordings.get(key)
        except TypeError:  # an argument that cannot be a key (a list, say): not recordable
            return self.fast_svi.eager_step(*args, **kwargs)[0]
        if recording is not None and self._have_states(recording.parameters):
            return self._replay(recording, args, kwargs)
        seen = self.eager_parameters.get(key)
        if seen is not None and key not in self.recordings and self._have_states(seen):
            return self._record(key, args, kwargs)
        loss, parameters = self.fast_svi.eager_step(*args, **kwargs)
        if len(self.eager_parameters) < MAX_SIGNATURES:
            self.eager_parameters.setdefault(key, parameters)
        return loss

    def _have_states(self, parameters: list[torch.Tensor]) -> bool:
        optimizer = self.fast_svi.optim.optimizer
        return optimizer is not None and all(optimizer.state.get(parameter) for parameter in parameters)

    def _live(self, parameters: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The learning rate (on the parameters' device, where the fused Adam reads it) and the KL
        weight, as graph inputs."""
        weight = 1.0 if self.kl_weight is None else self.kl_weight.weight
        device = parameters[0].device if parameters else None
        lr = torch.tensor(self.fast_svi.optim.lr, dtype=torch.float64, device=device)
        return lr, torch.tensor(weight, dtype=torch.float64)

    def _states(self, parameters: list[torch.Tensor]) -> list[torch.Tensor]:
        state = self.fast_svi.optim.optimizer.state
        return [state[parameter][name] for parameter in parameters for name in STATE_KEYS]

    def _record(self, key: tuple, args: tuple, kwargs: dict) -> float:
        parameters = self.eager_parameters[key]
        self.recordings[key] = None  # unless the recording below succeeds
        optimizer = self.fast_svi.optim.optimizer
        outcome = {}

        def recorded(arguments, lr, weight, parameters, states):
            group = optimizer.param_groups[0]
            float_lr, group["lr"] = group["lr"], lr
            float_weight = None if self.kl_weight is None else self.kl_weight.weight
            if self.kl_weight is not None:
                self.kl_weight.weight = weight
            try:
                outcome["loss"], outcome["parameters"] = self.fast_svi.graph_step(*arguments[0], **arguments[1])
            finally:
                group["lr"] = float_lr
                if self.kl_weight is not None:
                    self.kl_weight.weight = float_weight
            return outcome["loss"]

        before = rng_state()
        try:
            graph = make_fx(recorded)((args, kwargs), *self._live(parameters), parameters, self._states(parameters))
        except RuntimeError:  # make_fx refuses a value read; a genuine error of the program recurs eagerly
            if "loss" in outcome:  # the step was taken while it was recorded
                return outcome["loss"].item()
            set_rng_state(before)  # the eager step draws what it would have drawn
            return self.fast_svi.eager_step(*args, **kwargs)[0]
        same_parameters = {id(tensor) for tensor in outcome["parameters"]} == {id(tensor) for tensor in parameters}
        if same_parameters and not any(map(_value_dependent_shape, graph.graph.nodes)):
            self.recordings[key] = _Recording(graph, parameters)
        return outcome["loss"].item()  # the recording ran the step for real

    def _replay(self, recording: _Recording, args: tuple, kwargs: dict) -> float:
        parameters = recording.parameters
        with torch.no_grad():
            loss = recording.graph((args, kwargs), *self._live(parameters), parameters, self._states(parameters))
        return loss.item()


def _value_dependent_shape(node: torch.fx.Node) -> bool:
    """Whether the node's output shape depends on tensor values (a replay would keep the shape)."""
    return isinstance(node.target, torch._ops.OpOverload) and torch.Tag.dynamic_output_shape in node.target.tags
