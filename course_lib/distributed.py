"""Training on several processes at once (PyTorch DDP), as ``torchrun`` starts them.

Lesson 05 (pretraining, its section on DDP) uses this; ``course_lib.train`` calls it.

``torchrun --nproc_per_node N`` starts N copies of the same program and tells each who it is
through environment variables: RANK (0 .. WORLD_SIZE - 1), WORLD_SIZE and LOCAL_RANK (which GPU
on this machine). Each process takes 1/N of every batch; ``DistributedDataParallel`` averages
the gradients of all processes during ``backward()``, so every copy of the model takes the same
step. CPUs talk over TCP (the ``gloo`` backend), GPUs directly (``nccl``). A single process
(WORLD_SIZE unset) skips all of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from course_lib.env import get_device
from course_lib.errors import CourseError


@dataclass
class Processes:
    """Who this process is: its rank among ``world`` processes and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    own_group: bool = False  # whether setup() started the process group (and stops it)

    def share(self, batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """This process's slice of a global batch (every tensor's first dimension), on its
        device: each process draws the same global batch, so together they see exactly it."""
        b = len(batch[0]) // self.world
        return tuple(t[self.rank * b : (self.rank + 1) * b].to(self.device) for t in batch)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as training runs it: wrapped in DDP when there are several processes."""
        if self.world == 1:
            return model
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: Tensor) -> float:
        """The mean of a scalar over all processes (each has the mean over its equal share)."""
        if self.world > 1:
            value = value.float().clone()
            dist.all_reduce(value)  # sum over processes (gloo has no average)
            value /= self.world
        return value.item()

    def rank0_says(self, flag: bool) -> bool:
        """Rank 0's flag, in every process (e.g. rank 0's clock decides when time is up, or one
        process would wait for the others forever)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def finish(self, completed: bool) -> None:
        """Stop the process group this process started. After a complete run, wait for the
        others first: rank 0 is still evaluating and saving when they are done."""
        if self.own_group:
            if completed:
                dist.barrier()
            dist.destroy_process_group()


def setup(device: str | None = None) -> Processes:
    """Join the process group torchrun set up for us (or stay alone), and pick the device."""
    chosen = get_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(device=chosen)
    if chosen.type == "mps":
        raise CourseError("DDP (torchrun) does not run on mps: pass --device cpu")
    if chosen.type == "cuda":
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(chosen)
    own = not dist.is_initialized()
    if own:  # gloo: CPUs talk over TCP; nccl: GPUs talk directly
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), chosen, own)
