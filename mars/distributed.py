"""The small distributed context the MARS loop and the scorer are given: rank, world size,
broadcast from rank 0, gather.

It reads torch.distributed's default process group, the one every Lightning strategy (DDP, FSDP,
DeepSpeed, ModelParallel) initialises, so nothing below the Lightning glue needs a Trainer; a
plain process is rank 0 of 1. No shared filesystem between nodes is assumed: objects travel
through the process group.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch.distributed as dist

T = TypeVar("T")


class Distributed:
    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def rank(self) -> int:
        return dist.get_rank() if self.world_size > 1 else 0

    def on_rank0(self, fn: Callable[[], T]) -> T:
        """Rank 0 runs `fn` (generating, or reading its own cache); every rank gets its result."""
        if self.world_size == 1:
            return fn()
        result = [fn() if self.rank == 0 else None]
        dist.broadcast_object_list(result, src=0)
        return result[0]

    def gather(self, obj: T) -> list[T]:
        """`obj` of every rank, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


LOCAL = Distributed()  # torch.distributed as initialised (or not) in this process
