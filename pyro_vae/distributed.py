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
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """Whether the environment of ``torchrun`` (``RANK``, ``WORLD_SIZE``, ...) is set."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def initialize(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` set up (NCCL for CUDA, gloo otherwise) and return
    this process's device: ``cuda:LOCAL_RANK`` for CUDA, else ``device``."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device
    if not launched_by_torchrun():
        raise RuntimeError(
            "distributed training needs the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, "
            "MASTER_PORT); start it with: torchrun --nproc_per_node=N -m pyro_vae train ... --distributed"
        )
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


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
    """Called after every backward pass with the parameters (the same list in every process), the
    number of rows this process used and its loss: synchronizes parameters it has not seen before
    (:meth:`synchronize`), then replaces each gradient by the row-weighted mean over the processes,
    ``sum_r rows_r grad_r / sum_r rows_r``, with one all-reduce of a flat buffer that also carries
    the losses. With each process's loss scaled by ``size / rows_r``, that is the gradient (and
    the loss) of the whole minibatch, even when the shares differ in size; a non-finite loss in
    any process makes the returned loss non-finite in all of them, so they stop together."""

    def __init__(self) -> None:
        self._synchronized: set[int] = set()

    def __call__(self, parameters: list[torch.Tensor], rows: int, loss: torch.Tensor) -> torch.Tensor:
        self.synchronize(parameters)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        weight = loss.new_tensor([rows])
        flat = torch.cat([rows * grad.reshape(-1) for grad in grads] + [weight * loss.reshape(1), weight])
        dist.all_reduce(flat)
        flat = flat / flat[-1]
        offset = 0
        for parameter, grad in zip(parameters, grads, strict=True):
            parameter.grad = flat[offset : offset + grad.numel()].view_as(grad)
            offset += grad.numel()
        return flat[-2]

    def synchronize(self, parameters: list[torch.Tensor]) -> None:
        """Give every process rank 0's values of those ``parameters`` not synchronized yet (in
        place; the same list in every process)."""
        new = [parameter for parameter in parameters if id(parameter) not in self._synchronized]
        with torch.no_grad():
            for parameter in new:
                dist.broadcast(parameter, src=0)
        self._synchronized.update(id(parameter) for parameter in new)


def leave() -> None:
    """Leave the process group together: a barrier, then destroy it. A process that exits while
    the group lives may abort in gloo's teardown ("terminate called without an active
    exception", seen once in a 2-process test while rank 0 was still writing its report)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block first (say, a download), then the others."""
    if dist.is_initialized() and rank() != 0:
        dist.barrier()
    yield
    if dist.is_initialized() and rank() == 0:
        dist.barrier()


def mean_over_processes(value: float) -> float:
    """The mean of a number over the processes (the number itself without a process group)."""
    return _reduce(value, dist.ReduceOp.SUM) / world_size()


def max_over_processes(value: float) -> float:
    """The largest of a number over the processes (the number itself without a process group)."""
    return _reduce(value, dist.ReduceOp.MAX)


def _reduce(value: float, op) -> float:
    if not dist.is_initialized():
        return value
    # NCCL reduces CUDA tensors only; this process's GPU is the current device (initialize).
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.item()
