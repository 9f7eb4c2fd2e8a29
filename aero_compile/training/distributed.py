"""Where the run executes: one process (CPU or one GPU), or one process per GPU under ``torchrun`` (DDP)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from ..errors import AeroError


@dataclass
class Placement:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()


def _resolve_device(choice: str, local_rank: int) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AeroError(f"--device {choice}: this torch build sees no CUDA device; use --device cpu")
        if choice == "cuda":
            return torch.device("cuda", local_rank)
    try:
        return torch.device(choice)
    except RuntimeError:
        raise AeroError(f"--device must be auto, cpu, cuda or cuda:N, not '{choice}'") from None


def setup(choice: str) -> Placement:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(choice, local_rank)
    if world_size > 1 and not torch_dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Placement(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def teardown(placement: Placement) -> None:
    if placement.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@contextlib.contextmanager
def main_first(placement: Placement):
    """Rank 0 runs the block first (it fills the tokenizer and token caches), then the others."""
    if not placement.is_main:
        placement.barrier()
    yield
    if placement.is_main:
        placement.barrier()
