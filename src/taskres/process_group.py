"""This process's place in a torchrun job (rank, world, local rank) and the barriers between the ranks.

Shared by ``taskres extract`` and ``taskres bench``: both read torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE), start gloo on CPU or nccl on CUDA, and wait for each other at barriers. Without
torchrun the process is rank 0 of 1 and every call here does nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass
class Group:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_env(cls) -> "Group":
        env = os.environ
        try:
            return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                       int(env.get("LOCAL_WORLD_SIZE", 1)))
        except ValueError:
            raise ValueError("RANK/WORLD_SIZE/LOCAL_RANK must be integers (they are set by torchrun)") from None

    def start(self, device: torch.device, timeout_s: float) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        if device.type == "cuda":
            dist.init_process_group("nccl", timeout=timedelta(seconds=timeout_s), device_id=device)
        else:
            dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def rank_device(device: str, group: Group) -> str:
    """Plain ``cuda`` means this rank's own GPU (LOCAL_RANK) under torchrun."""
    return f"cuda:{group.local_rank}" if device == "cuda" and group.world > 1 else device
