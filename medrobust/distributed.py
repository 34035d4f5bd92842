"""torchrun support: ``torchrun --nproc_per_node=N -m medrobust train|evaluate ...``.

torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous variables; we start the
process group (nccl on CUDA, gloo on CPU) from them. Without them everything runs in one process.
Only rank 0 writes checkpoints, progress files and results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device_name: str = "auto") -> DistInfo:
    """Start the process group when launched by torchrun, and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(device_name)
        except RuntimeError:
            raise ValueError(f"unknown device {device_name!r}; use auto, cpu, cuda or cuda:N.") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device_name}: no CUDA GPU is available here; use auto or cpu.")
        if device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{local}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local, device=device)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
