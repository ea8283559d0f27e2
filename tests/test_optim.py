"""fit's optimizers: the fused Adam and the joint optimizer behind Pyro's interface."""

from __future__ import annotations

import copy
import subprocess
import sys

import pyro
import pyro.optim
import pytest
import torch

from pyro_vae.optim import FusedAdam, make_optimizer


def test_fused_adam_equals_adam_also_for_non_contiguous_gradients():
    """Transposed gradients, as some backward passes leave them: PyTorch 2.14's fused CPU kernel
    alone steps them wrongly (by 1e-2 after five steps here); FusedAdam matches the plain Adam."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(256, 64, generator=generator)
    ours, reference = start.clone().requires_grad_(), start.clone().requires_grad_()
    optimizers = FusedAdam([ours], lr=1e-3), torch.optim.Adam([reference], lr=1e-3)
    for _ in range(5):
        gradient = torch.randn(64, 256, generator=generator).t()
        assert not gradient.is_contiguous()
        ours.grad, reference.grad = gradient, gradient.clone()
        for optimizer in optimizers:
            optimizer.step()
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert (ours - start).abs().max() > 1e-3  # it did step


def test_fused_adam_is_torchs_fused_adam_bit_for_bit_per_dtype():
    generator = torch.Generator().manual_seed(1)
    starts = [torch.randn(7, 5, generator=generator), torch.randn(3, generator=generator, dtype=torch.float64)]
    ours = [start.clone().requires_grad_() for start in starts]
    theirs = [start.clone().requires_grad_() for start in starts]
    mine, reference = FusedAdam(ours, lr=0.01), torch.optim.Adam(theirs, lr=0.01, fused=True)
    for step in range(4):
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            if step == 2 and index == 1:
                a.grad = b.grad = None  # a step without a gradient leaves the tensor and its moments
                continue
            a.grad = torch.randn(a.shape, generator=generator, dtype=a.dtype)
            b.grad = a.grad.clone()
        mine.step(), reference.step()
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(mine.state[a]["exp_avg_sq"], reference.state[b]["exp_avg_sq"])
        assert torch.equal(mine.state[a]["step"], reference.state[b]["step"])
    assert {key for key in reference.param_groups[0] if key != "params"} == {
        key for key in mine.param_groups[0] if key != "params"
    }, "the same options, so that saved states carry the same keys"


def test_training_does_not_import_torch_dynamo():
    """torch.optim.Optimizer's first construction imports torch._dynamo (about 2 s); fit avoids it."""
    code = (
        "import sys, torch, pyro_vae\n"
        "from pyro_vae.guides import AmortizedNormal\n"
        "from pyro_vae.models import VAE\n"
        "model, guide = VAE.build((4,), 2, [8], 'mlp', 'gaussian'), AmortizedNormal.build((4,), 2, [8], 'mlp')\n"
        "pyro_vae.fit(model, guide, torch.randn(64, 4), epochs=2, progress=False)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_make_optimizer_names():
    assert make_optimizer("adam", 1e-3, None).pt_optim_constructor is FusedAdam
    assert make_optimizer("clipped-adam", 1e-3, None).pt_optim_args["clip_norm"] == 10.0
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer("sgd", 1e-3, None)


def _store_parameters(seed: int = 0) -> list[torch.Tensor]:
    """Three tensors in Pyro's store, as a model's parameters would be."""
    pyro.clear_param_store()
    generator = torch.Generator().manual_seed(seed)
    for name, shape in (("a", (5, 3)), ("b", (3,)), ("c", (4, 4))):
        pyro.param(name, torch.randn(shape, generator=generator))
    return [value for _, value in pyro.get_param_store().named_parameters()]


def _gradients(step: int, parameters: list[torch.Tensor]) -> list[torch.Tensor]:
    """The fixed pseudo-gradients of one step."""
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(parameter.shape, generator=generator) for parameter in parameters]


def _chosen(step: int, used: list[int] | None, count: int):
    return used if used is not None and step % 2 else range(count)


def _run(optim, steps: int, used: list[int] | None = None, start: int = 0) -> list[torch.Tensor]:
    """Steps with fixed pseudo-gradients; on odd steps ``used`` picks the parameters stepped (the
    others hold a zero gradient, as Pyro's SVI leaves them: they must not move, though Adam's
    momentum would move them)."""
    parameters = [value for _, value in pyro.get_param_store().named_parameters()]
    for step in range(start, start + steps):
        chosen = _chosen(step, used, len(parameters))
        for index, (parameter, gradient) in enumerate(zip(parameters, _gradients(step, parameters), strict=True)):
            parameter.grad = gradient if index in chosen else torch.zeros_like(parameter)
        optim([parameters[index] for index in chosen])
        for parameter in parameters:
            parameter.grad = None
    return [parameter.detach().clone() for parameter in parameters]


def _step_counts(state: dict[str, dict]) -> dict[str, int]:
    return {name: int(entry["state"][0]["step"]) for name, entry in state.items() if entry["state"]}


def _torch_adam(
    steps: int, used: list[int] | None = None, clip_norm: float | None = None, lr: list[float] = (0.01,)
) -> list[torch.Tensor]:
    """The reference for ``_run``: the same steps taken outside Pyro and pyro_vae, by one plain
    ``torch.optim.Adam`` per tensor (the single-tensor kernel, not the fused one), each stepping
    only when its tensor is chosen; ``clip_norm`` clips each gradient first with torch's
    ``clip_grad_norm_``; ``lr[step]`` (the last entry for later steps) is the rate of each step."""
    parameters = [value.detach().clone().requires_grad_() for value in _store_parameters()]
    optimizers = [torch.optim.Adam([parameter], lr=lr[0], foreach=False, fused=False) for parameter in parameters]
    for step in range(steps):
        for index in _chosen(step, used, len(parameters)):
            parameters[index].grad = _gradients(step, parameters)[index]
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters[index], clip_norm)
            optimizers[index].param_groups[0]["lr"] = lr[min(step, len(lr) - 1)]
            optimizers[index].step()
    return [parameter.detach() for parameter in parameters]


def test_joint_adam_steps_like_torch_adam_per_parameter():
    """The same steps as one plain torch Adam per tensor, also when some parameters miss a step
    (those keep their value and their moments: no step, unlike a zero-gradient Adam step)."""
    _store_parameters()
    ours = _run(make_optimizer("adam", 0.01, None), 6, used=[0, 2])
    expected = _torch_adam(6, used=[0, 2])
    start = _store_parameters()
    for mine, theirs, initial in zip(ours, expected, start, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
        assert (mine - initial).abs().max() > 1e-3
    # the missed steps matter: tensor 1, stepped at every step instead, ends elsewhere
    assert (ours[1] - _torch_adam(6)[1]).abs().max() > 1e-3


def test_joint_clipped_adam_steps_like_pyros_per_parameter_clipped_adam():
    """Pyro's ClippedAdam, which clamps each gradient element, through JointOptim: the same steps
    as Pyro's own per-parameter wrapper of it, also when some parameters miss a step."""
    _store_parameters()
    ours = _run(make_optimizer("clipped-adam", 0.01, None), 6, used=[0, 2])
    _store_parameters()
    expected = _run(pyro.optim.ClippedAdam({"lr": 0.01, "clip_norm": 10.0}), 6, used=[0, 2])
    start = _store_parameters()
    for mine, theirs, initial in zip(ours, expected, start, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
        assert (mine - initial).abs().max() > 1e-3


def test_joint_optimizer_clips_each_parameter_like_torch():
    """clip_norm clips each tensor's gradient to that norm before its Adam step, as torch's
    clip_grad_norm_ on that tensor alone does (not the norm over all tensors together)."""
    _store_parameters()
    ours = _run(make_optimizer("adam", 0.01, clip_norm=0.5), 3)
    expected = _torch_adam(3, clip_norm=0.5)
    for mine, theirs in zip(ours, expected, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    unclipped = _torch_adam(3)
    assert max((mine - theirs).abs().max() for mine, theirs in zip(ours, unclipped, strict=True)) > 1e-4


def test_state_moves_between_joint_and_per_parameter_optimizers():
    """get_state has PyroOptim's format with torch's Adam states, so a checkpoint of either
    resumes in the other and the continued run equals the uninterrupted one."""
    _store_parameters()
    uninterrupted = _run(make_optimizer("adam", 0.01, None), 6)

    _store_parameters()
    per_parameter = pyro.optim.PyroOptim(torch.optim.Adam, {"lr": 0.01, "fused": True})  # torch's own states
    _run(per_parameter, 3)
    saved = copy.deepcopy(per_parameter.get_state())
    resumed = make_optimizer("adam", 0.01, None)
    resumed.set_state(saved)
    continued = _run(resumed, 3, start=3)
    for mine, theirs in zip(continued, uninterrupted, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)

    back = pyro.optim.PyroOptim(torch.optim.Adam, {"lr": 0.01, "fused": True})
    back.set_state(copy.deepcopy(resumed.get_state()))
    assert set(back._state_waiting_to_be_consumed) == {"a", "b", "c"}
    step_counts = {name: state["state"][0]["step"].item() for name, state in resumed.get_state().items()}
    assert step_counts == {"a": 6, "b": 6, "c": 6}


def test_restart_restores_states_and_forgets_the_rest():
    _store_parameters()
    optim = make_optimizer("adam", 0.01, None)
    _run(optim, 2)
    saved = copy.deepcopy(optim.get_state())
    after_two = [value.detach().clone() for _, value in pyro.get_param_store().named_parameters()]
    continued = _run(optim, 2, start=2)

    with torch.no_grad():
        for (_, value), start in zip(pyro.get_param_store().named_parameters(), after_two, strict=True):
            value.copy_(start)
    optim.restart(saved)
    repeated = _run(optim, 2, start=2)  # the same two steps again
    assert all(mine.equal(theirs) for mine, theirs in zip(repeated, continued, strict=True))
    assert not continued[0].equal(after_two[0])

    optim.restart({})  # no saved state: every parameter starts afresh (step counts from 1)
    _run(optim, 1)
    assert all(state["state"][0]["step"].item() == 1 for state in optim.get_state().values())


def test_learning_rate_is_one_knob():
    """Setting lr changes the rate of every later step of every parameter (checked against torch
    Adam whose rate changes at that step) and the rate its saved states carry."""
    _store_parameters()
    optim = make_optimizer("adam", 0.01, None)
    _run(optim, 1)
    optim.lr = 0.005
    assert all(state["param_groups"][0]["lr"] == 0.005 for state in optim.get_state().values())
    ours = _run(optim, 2, start=1)
    for mine, theirs, unchanged in zip(ours, _torch_adam(3, lr=[0.01, 0.005]), _torch_adam(3), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
        assert (mine - unchanged).abs().max() > 1e-3


def test_a_late_parameter_keeps_the_learning_rate_and_waiting_states_are_kept():
    """After a resume, a parameter first stepped later gets its saved moments but does not reset
    the learning rate set since; states still waiting are part of get_state and of a restart."""
    _store_parameters()
    saved = pyro.optim.PyroOptim(torch.optim.Adam, {"lr": 0.01, "fused": True})
    _run(saved, 2)
    state = copy.deepcopy(saved.get_state())
    a, b, _ = (value for _, value in pyro.get_param_store().named_parameters())

    optim = make_optimizer("adam", 0.02, None)
    optim.set_state(state)
    assert optim.lr == 0.01  # the resumed run's rate
    a.grad = torch.ones_like(a)
    optim([a])
    optim.lr = 0.005  # a rollback since
    assert set(optim.get_state()) == {"a", "b", "c"}
    optim.restart(copy.deepcopy(optim.get_state()))
    optim.lr = 0.005
    b.grad = torch.ones_like(b)
    optim([b])
    assert optim.lr == 0.005 and optim.optimizer.param_groups[0]["lr"] == 0.005
    assert optim.get_state()["b"]["state"][0]["step"].item() == 3  # two saved steps and this one
    assert "c" in optim.get_state()
    before = [value.detach().clone() for _, value in pyro.get_param_store().named_parameters()]
    states = copy.deepcopy(optim.get_state())
    a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
    optim([])  # nothing to step: nothing moves, no state changes
    after = [value.detach() for _, value in pyro.get_param_store().named_parameters()]
    assert all(old.equal(new) for old, new in zip(before, after, strict=True))
    assert _step_counts(optim.get_state()) == _step_counts(states) == {"a": 3, "b": 3, "c": 2}
