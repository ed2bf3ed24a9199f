"""Where and how the work runs: device choice, threads, seeds, the distributed process group."""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from textjepa.errors import TextJepaError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TextJepaError(f"--device {name} asked for, but CUDA is not available here (use --device auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise TextJepaError(f"unknown device {name!r} (use auto, cpu or cuda)") from exc


def configure_threads() -> None:
    """One thread per process when several share the machine (torchrun), else all cores.

    TEXTJEPA_NUM_THREADS overrides. Two processes with two threads each on two cores run 3-12x slower.
    """
    requested = os.environ.get("TEXTJEPA_NUM_THREADS")
    if requested:
        threads = int(requested)
    else:
        cores = os.cpu_count() or 1
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, cores // max(1, local_world))
    torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device, timeout_seconds: float = 120.0) -> Distributed:
    """Join the process group torchrun describes in the environment; a no-op for a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    except Exception as exc:  # rendezvous failures come as several exception types
        raise TextJepaError(f"could not join the distributed job ({backend}): {exc}") from exc
    info = Distributed(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def shutdown_distributed(info: Distributed) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
