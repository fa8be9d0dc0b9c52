"""``torch.distributed`` helpers for meta-training: shard a meta-batch's tasks, all-reduce meta-gradients.

The trainer runs unchanged under ``torchrun --nproc_per_node=N``: every rank samples the same
meta-batch from the same seeded generator, keeps its contiguous shard of the tasks, computes the
mean query loss of that shard, and the meta-gradients are combined as

    g = Σ_r (n_r / n) · g_r          (n_r tasks on rank r, n = Σ_r n_r)

which is the gradient of the mean over all ``n`` tasks, also when ``n`` does not divide evenly
(a rank without tasks contributes zeros with weight 0). One ``all_reduce`` of a flat buffer per
step. Backend: ``nccl`` when CUDA is available, ``gloo`` otherwise. No process pool of our own:
processes come from ``torchrun`` (or ``torch.multiprocessing.spawn`` in tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``; ``device`` to compute on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on the rank that writes checkpoints and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def default_backend() -> str:
    """``nccl`` on CUDA machines, ``gloo`` on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ...).

    A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) gets ``DistInfo()`` and no group.
    An already initialised group is reused.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_available() or (world <= 1 and not dist.is_initialized()):
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend or default_backend())
    return current()


def current() -> DistInfo:
    """The ``DistInfo`` of this process (``DistInfo()`` when no group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if dist.get_backend() == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shard_bounds(n_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n_items`` (sizes differ by at most 1)."""
    base, extra = divmod(n_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """The contiguous share of ``items`` that belongs to ``info.rank``."""
    start, stop = shard_bounds(len(items), info.rank, info.world_size)
    return list(items[start:stop])


def all_reduce_gradients(parameters: Iterable[nn.Parameter], weight: float, info: DistInfo) -> None:
    """Replace each ``p.grad`` by ``Σ_ranks weight_r · p.grad_r`` (one flat all-reduce).

    Args:
        parameters: the meta-parameters, in the same order on every rank.
        weight: this rank's share ``n_r / n`` of the meta-batch.
        info: the process group position; a no-op when ``info.enabled`` is False.
    """
    params = [p for p in parameters if p.requires_grad]
    if not info.enabled:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], device=grads[0].device, dtype=grads[0].dtype)
    flat = torch.cat([g.reshape(-1) * weight for g in grads] + [present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    for p, count in zip(params, flat[offset:].tolist(), strict=True):
        if count == 0:  # no rank produced a gradient: keep "no gradient" (the optimiser skips it)
            p.grad = None


def all_reduce_sum(value: Tensor, info: DistInfo) -> Tensor:
    """Sum of ``value`` over ranks (``value`` itself when not distributed)."""
    if not info.enabled:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_module(module: nn.Module, info: DistInfo, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (identical start)."""
    if not info.enabled:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=src)


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if info.enabled:
        dist.barrier()
