"""The one torch.distributed set-up of the trainers and the demo: join the process group that
``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``),
NCCL on GPUs and gloo on the CPU, and leave it only if we created it."""
from __future__ import annotations

import os
from typing import Tuple

import torch
import torch.distributed as dist


def local_rank() -> int:
    """This process's GPU index under torchrun (0 in a single process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_world_size() -> int:
    """The number of processes torchrun started (1 in a single process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_process_group(device: torch.device) -> Tuple[int, int, bool]:
    """(rank, world size, whether this call created the group).

    An already initialised group (the caller's own) is used as it is; otherwise one is created when
    torchrun started several processes. On CUDA the process's device is made current first, as NCCL
    requires.
    """
    created = False
    if dist.is_available() and not dist.is_initialized() and launched_world_size() > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), created
    return 0, 1, created


def leave_process_group(created: bool) -> None:
    """Destroys the group if :func:`join_process_group` created it (a caller's own group stays)."""
    if created and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
