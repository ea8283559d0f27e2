"""Data-parallel training over processes with ``torch.distributed`` (gloo on CPU, NCCL on GPU).

Started by ``torchrun --nproc_per_node=N``, every process runs the same :func:`pyro_vae.fit`:
the minibatch order comes from the same seeded generator everywhere, and each process takes its
own share of every minibatch (rows ``rank, rank + N, ...``), so over an epoch it sees a
different ``1/N`` of the data. A process's loss is scaled by ``size / (its rows)``, so the
row-weighted mean of the ``N`` gradients is the gradient of the single-process minibatch ELBO.
Gradients are averaged with one all-reduce per step before the optimizer steps, and rank 0's
parameters are broadcast once at the start, so every process holds the same parameters
throughout. Only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """Whether the environment of ``torchrun`` (``RANK``, ``WORLD_SIZE``, ...) is set."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def initialize(device: torch.device) -> None:
    """Join the process group that ``torchrun`` set up (NCCL for CUDA, gloo otherwise)."""
    if dist.is_initialized():
        return
    if not launched_by_torchrun():
        raise RuntimeError(
            "distributed training needs the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, "
            "MASTER_PORT); start it with: torchrun --nproc_per_node=N -m pyro_vae train ... --distributed"
        )
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_writer() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return rank() == 0


def shard(index: torch.Tensor) -> torch.Tensor:
    """This process's rows of a minibatch's indices: ``rank, rank + N, ...`` (empty when the
    minibatch has fewer rows than processes)."""
    return index[rank() :: world_size()]


class GradientAverager:
    """Called after every backward pass with the parameters and the number of rows this process
    used: broadcasts rank 0's parameter values on the first call (and for parameters that appear
    later), then replaces each gradient by the row-weighted mean over the processes,
    ``sum_r rows_r grad_r / sum_r rows_r``, with one all-reduce of a flat buffer. With each
    process's loss scaled by ``size / rows_r``, that is the gradient of the whole minibatch even
    when the shares differ in size."""

    def __init__(self) -> None:
        self._synchronized: set[int] = set()

    def __call__(self, parameters: list[torch.Tensor], rows: int) -> None:
        new = [parameter for parameter in parameters if id(parameter) not in self._synchronized]
        with torch.no_grad():
            for parameter in new:
                dist.broadcast(parameter, src=0)
        self._synchronized.update(id(parameter) for parameter in new)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([rows * grad.reshape(-1) for grad in grads] + [grads[0].new_tensor([rows])])
        dist.all_reduce(flat)
        flat = flat[:-1] / flat[-1]
        offset = 0
        for parameter, grad in zip(parameters, grads, strict=True):
            parameter.grad = flat[offset : offset + grad.numel()].view_as(grad)
            offset += grad.numel()


def mean_over_processes(value: float) -> float:
    """The mean of a number over the processes (the number itself without a process group)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.item() / world_size()
