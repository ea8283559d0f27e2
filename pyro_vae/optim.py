"""The optimizers :func:`pyro_vae.fit` steps with, behind the :class:`pyro.optim.PyroOptim` interface."""

from __future__ import annotations

from collections.abc import Iterable

import pyro
import pyro.optim
import torch
from pyro.optim.clipped_adam import ClippedAdam
from torch.nn.utils import clip_grad_norm_

OPTIMIZERS = ("adam", "clipped-adam")


ADAM_OPTIONS = {  # torch.optim.Adam's defaults, as its param groups list them
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": True,
    "decoupled_weight_decay": False,
}


class FusedAdam:
    """Adam (Kingma & Ba 2015) with torch's fused kernel: the update of
    ``torch.optim.Adam(fused=True)`` bit for bit, one pass over each tensor instead of about ten
    (for the 784-400-50 VAE, 1.8 → 1.0 ms of a training step on an AVX-512 CPU), with the same
    state entries (``step``, ``exp_avg``, ``exp_avg_sq``) and param-group options, so that the
    states of either load in the other.

    It is not a :class:`torch.optim.Optimizer`: the first construction of one in a process imports
    ``torch._dynamo`` for ``torch.compile``'s sake, about 2 s of every process's first fit. It
    has what :class:`JointOptim` uses: ``param_groups`` (one group), ``state`` (by parameter) and
    :meth:`step`. Gradients are made contiguous before the step: PyTorch 2.14's fused CPU kernel
    reads a non-contiguous gradient (a transposed view, as some backward passes leave them) in the
    wrong order and takes wrong steps (``tests/test_optim.py``).
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3) -> None:
        self.param_groups = [{"params": list(params), "lr": lr, **ADAM_OPTIONS}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every parameter of the group that has a gradient."""
        group = self.param_groups[0]
        by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for parameter in group["params"]:
            if parameter.grad is None:
                continue
            if not parameter.grad.is_contiguous():
                parameter.grad = parameter.grad.contiguous()
            if not self.state.get(parameter):
                self.state[parameter] = {
                    "step": torch.zeros((), dtype=torch.float32, device=parameter.device),
                    "exp_avg": torch.zeros_like(parameter, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(parameter, memory_format=torch.preserve_format),
                }
            by_kind.setdefault((parameter.device, parameter.dtype), []).append(parameter)
        beta1, beta2 = group["betas"]
        for parameters in by_kind.values():  # the fused kernel takes one device and dtype at a time
            states = [self.state[parameter] for parameter in parameters]
            steps = [state["step"] for state in states]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                parameters,
                [parameter.grad for parameter in parameters],
                [state["exp_avg"] for state in states],
                [state["exp_avg_sq"] for state in states],
                [],
                steps,
                amsgrad=False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )


class JointOptim(pyro.optim.PyroOptim):
    """One torch optimizer for every parameter, behind Pyro's optimizer interface.

    :class:`~pyro.optim.PyroOptim` gives each parameter tensor an optimizer of its own and steps
    them one after another: for the eight tensors of an MLP VAE, eight passes through torch's
    optimizer machinery per step (3.2 ms of a 15 ms step at batch 128 on an AVX2 2-core CPU,
    against 1.9 ms for one call). Here one optimizer steps all of them in one call, a single kernel launch with
    :class:`FusedAdam`. For optimizers whose update is elementwise with a state per tensor (Adam,
    Pyro's ClippedAdam) that is the same update, step for step.

    As with ``PyroOptim``, a call steps exactly the parameters it is given (those with a
    gradient), an unseen parameter is adopted with its waiting state from :meth:`set_state`, and
    :meth:`get_state` returns one torch state dict per parameter name, so states saved by either
    class load in the other.

    :param constructor: an optimizer class with an elementwise update (:class:`FusedAdam`, or a
        :class:`torch.optim.Optimizer`).
    :param dict options: its keyword arguments, the same for every parameter (``lr`` among them).
    :param clip_norm: clip each parameter's gradient to this norm before the step, as
        ``PyroOptim``'s ``clip_args`` does.
    """

    def __init__(self, constructor: type, options: dict, clip_norm: float | None = None) -> None:
        super().__init__(constructor, dict(options))
        self.clip_norm = clip_norm
        self.optimizer: FusedAdam | torch.optim.Optimizer | None = None
        self.parameters: list[torch.Tensor] = []  # in the order they were first stepped
        self._adopted: set[torch.Tensor] = set()

    def __call__(self, params: Iterable[torch.Tensor], *args, **kwargs) -> None:
        params = list(params)
        if not params:
            return
        for parameter in params:
            if parameter not in self._adopted:
                self._adopt(parameter)
        if self.clip_norm is not None:
            for parameter in params:
                clip_grad_norm_(parameter, self.clip_norm)
        self.optimizer.param_groups[0]["params"] = params
        self.optimizer.step(*args, **kwargs)

    @property
    def lr(self) -> float:
        return self.pt_optim_args["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.pt_optim_args["lr"] = value
        if self.optimizer is not None:
            self.optimizer.param_groups[0]["lr"] = value

    def get_state(self) -> dict[str, dict]:
        """``{parameter name: torch state dict of that parameter alone}``, as ``PyroOptim``'s,
        with the states still waiting for their parameter's first step (after a resume)."""
        store = pyro.get_param_store()
        adopted = {store.param_name(parameter): self._state_dict(parameter) for parameter in self.parameters}
        return {**self._state_waiting_to_be_consumed, **adopted}

    def set_state(self, state_dict: dict[str, dict]) -> None:
        """Load a :meth:`get_state` result and its learning rate: now for the parameters already
        seen, at their first step for the others."""
        first = next(iter(state_dict.values()), None)
        if first is not None:
            self.lr = first["param_groups"][0]["lr"]
        self._state_waiting_to_be_consumed.update(state_dict)
        for parameter in self.parameters:
            self._load_waiting(parameter)

    def restart(self, state_dict: dict[str, dict]) -> None:
        """Put every parameter back to its entry of ``state_dict`` (a :meth:`get_state`), or to a
        fresh state where it has none (rolling back to before its first step)."""
        if self.optimizer is not None:
            self.optimizer.state.clear()
        self._state_waiting_to_be_consumed.clear()
        self.set_state(state_dict)

    def _adopt(self, parameter: torch.Tensor) -> None:
        if self.optimizer is None:
            self.optimizer = self.pt_optim_constructor([parameter], **self.pt_optim_args)
        self.parameters.append(parameter)
        self._adopted.add(parameter)
        self._load_waiting(parameter)

    def _state_dict(self, parameter: torch.Tensor) -> dict:
        options = {key: value for key, value in self.optimizer.param_groups[0].items() if key != "params"}
        state = self.optimizer.state.get(parameter)
        return {"state": {0: dict(state)} if state else {}, "param_groups": [{**options, "params": [0]}]}

    def _load_waiting(self, parameter: torch.Tensor) -> None:
        """Give ``parameter`` its state waiting from :meth:`set_state`, if there is one."""
        saved = self._state_waiting_to_be_consumed.pop(pyro.get_param_store().param_name(parameter), None)
        if saved is None:
            return
        self.optimizer.state.pop(parameter, None)
        for state in saved["state"].values():
            self.optimizer.state[parameter] = {
                key: _on_parameter(key, value, parameter) for key, value in state.items()
            }


def _on_parameter(key: str, value, parameter: torch.Tensor):
    """A copy of one optimizer state entry on the parameter's device, as torch's
    ``Optimizer.load_state_dict`` places it (a fused kernel wants its step count there too)."""
    if not isinstance(value, torch.Tensor):
        return value
    dtype = torch.float32 if key == "step" else parameter.dtype
    return value.to(dtype=dtype, device=parameter.device, copy=True)


def make_optimizer(name: str, lr: float, clip_norm: float | None) -> JointOptim:
    """``"adam"`` (:class:`FusedAdam`, optionally clipping each gradient to ``clip_norm``) or
    ``"clipped-adam"`` (Pyro's :class:`~pyro.optim.clipped_adam.ClippedAdam`, which clamps every
    gradient element to ``clip_norm``, default 10), each as one :class:`JointOptim`."""
    if name == "adam":
        return JointOptim(FusedAdam, {"lr": lr}, clip_norm)
    if name == "clipped-adam":
        return JointOptim(ClippedAdam, {"lr": lr, "clip_norm": clip_norm or 10.0})
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
