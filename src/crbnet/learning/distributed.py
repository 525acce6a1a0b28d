"""Data-parallel training: joining the process group torchrun sets up, and the few collective
operations the trainer needs.

Run under ``torchrun --nproc_per_node N -m crbnet train ...``: each process draws its own data
(its rank enters its data seed), gradients are averaged by DDP (gloo on CPU, nccl on CUDA),
``batch_size`` is per process, and only rank 0 validates and writes files. Without torchrun's
environment everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist

from crbnet.learning.checkpoint import checksum


@dataclass
class DistInfo:
    """This process's place in the process group (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    #: Whether this process joined the group here (and so leaves it: :func:`leave`).
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in the environment (no-op otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, backend, owns), device


def leave(info: DistInfo) -> None:
    """Leave the process group that :func:`init_distributed` joined. A group left to the
    interpreter's exit can take a process down with it (its communication threads are torn
    down by static destructors: "terminate called without an active exception", seen once in
    the two-process test)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every process (e.g. "stop now": only rank 0 keeps the clock)."""
    if not info.active:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64,
                     device=device if info.backend == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def gather(obj: Any, info: DistInfo) -> list:
    """``obj`` of every process, in rank order (a one-item list without a process group)."""
    if not info.active:
        return [obj]
    out: list = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Short checksum of a state dict: equal on every process when DDP kept them in step."""
    return checksum(dict(state))[:16]


def wrap_for_training(net: torch.nn.Module, info: DistInfo, device: torch.device,
                      sync_batch_norm: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(net, trained)``: ``trained`` is what the loop calls — ``net`` itself, or under a
    process group ``net`` in DistributedDataParallel (gradients averaged over processes), with
    batch norm synchronized across processes if ``sync_batch_norm``. ``net`` is what is
    validated and saved."""
    if not info.active:
        return net, net
    from torch.nn.parallel import DistributedDataParallel as DDP

    if sync_batch_norm:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    trained = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    return net, trained


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op without a process group)."""
    if info.active:
        dist.barrier()


__all__ = ["DistInfo", "init_distributed", "leave", "broadcast_flag", "gather", "state_fingerprint",
           "wrap_for_training", "barrier"]
