"""Several processes, one run: PyTorch's own distributed engine, as `torchrun` starts it.

`torchrun --nproc_per_node=N -m hpcl4sr train ...` runs N copies of the command with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment; `join` reads them and joins the process
group (gloo on CPU, nccl on GPU). Without those variables everything here is a no-op for one process,
so the trainer and the evaluator have a single code path.

What each rank does is decided where it is used: the trainer seeds each rank's batches and in-model
draws apart and writes files from rank 0 only; the evaluator shards users over ranks and gathers their
per-user metrics. The prepared dataset is memory-mapped, so N ranks on one machine share the page cache
instead of holding N copies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the run: rank `rank` of `world` processes (1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, checkpoints and progress bars."""
        return self.rank == 0

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        if self.world == 1:
            return [value]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


SINGLE_PROCESS = ProcessGroup()


def launched_world_size() -> int:
    """How many processes torchrun started (1 when the command was run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank among those torchrun started (0 when the command was run directly)."""
    return int(os.environ.get("RANK", "0"))


def join(device: torch.device) -> tuple[ProcessGroup, torch.device, bool]:
    """Join torchrun's process group if there is one: (group, this rank's device, joined here).

    On CUDA each rank takes the GPU of its LOCAL_RANK. The third value says whether this call created
    the group (the caller then leaves it with `leave`); a group created earlier is reused as is.
    """
    if launched_world_size() == 1:
        return SINGLE_PROCESS, device, False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    joined_here = not dist.is_initialized()
    if joined_here:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return current_group(), device, joined_here


def current_group() -> ProcessGroup:
    """The group this process has joined, or the single-process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE_PROCESS
    return ProcessGroup(rank=dist.get_rank(), world=dist.get_world_size(),
                        local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def leave(synchronise: bool = True) -> None:
    """Leave the group. `synchronise` first waits for every rank, so that no rank tears gloo's connections
    down while a peer still uses them (a rank that destroyed the group early once aborted its peer with
    "terminate called without an active exception"); a rank leaving on an error skips the wait, which
    could otherwise hang on a peer that never arrives."""
    if dist.is_initialized():
        if synchronise:
            dist.barrier()
        dist.destroy_process_group()
