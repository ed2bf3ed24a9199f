"""Where and how the work runs: device choice, threads, seeds, the distributed process group."""

from __future__ import annotations

import datetime
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from textjepa.errors import TextJepaError
from textjepa.precision import PrecisionChoice, configure_fp32_matmul, read_cpu_flags, resolve_precision
from textjepa.settings import Settings


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TextJepaError(f"--device {name} asked for, but CUDA is not available here (use --device auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise TextJepaError(f"unknown device {name!r} (use auto, cpu or cuda)") from exc


def choose_precision(
    requested: str, device: torch.device, cpuinfo: str | None = None, work: str = "training", dim: int | None = None
) -> PrecisionChoice:
    """--precision for a run on `device` doing `work` (training, encoding or serving: see precision.Work): the
    edge where the CPU flags are read (/proc/cpuinfo unless given). dim: the model's width, where known."""
    choice = resolve_precision(requested, device, read_cpu_flags() if cpuinfo is None else cpuinfo, work=work, dim=dim)
    configure_fp32_matmul(choice)
    return choice


def configure_threads(settings: Settings | None = None) -> None:
    """One thread per process when several share the machine (torchrun), else all cores.

    TEXTJEPA_NUM_THREADS (in `settings`, the environment the command was started with) overrides. Two processes
    with two threads each on two cores run 3-12x slower.
    """
    settings = settings or Settings()
    requested = settings.num_threads
    if requested:
        threads = requested
    else:
        cores = os.cpu_count() or 1
        threads = max(1, cores // max(1, settings.local_world_size))
        # Other busy processes: torch's threads then spin-wait on each other. Measured on 2 cores beside
        # two busy processes, 2 threads trained 27x slower than 1 (738 vs 19,978 tokens/s).
        if _load_average() > cores / 2:
            threads = 1
    torch.set_num_threads(threads)


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on every platform
        return 0.0


def uses_pinned_copies(device: torch.device) -> bool:
    """Whether batches go to `device` through pinned (page-locked) host memory: only to a CUDA device, where a
    copy from pinned memory can run asynchronously. On the CPU the batch is used where it is."""
    return device.type == "cuda"


def host_to_device(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch array (or CPU tensor) as a tensor on `device`.

    To a CUDA device it is staged in pinned memory and copied with non_blocking=True, so the copy queues behind
    the GPU's work instead of making the host wait for it; the host goes on preparing the next step meanwhile.
    (The tensor is ready for the kernels queued after it on the same stream, which is all the step uses.)
    On the CPU: the array's own memory, no copy.
    """
    tensor = torch.as_tensor(array)
    if uses_pinned_copies(device):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


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


# How long a collective (or joining the job) may wait for the other ranks. Rank 0 validates and saves while
# the others wait at a barrier, so it must cover a validation pass; TEXTJEPA_DIST_TIMEOUT (seconds) overrides.
DEFAULT_DIST_TIMEOUT_SECONDS = 600.0
# Tokenising a large corpus the first time can take hours; the other ranks wait that long for it.
DATA_PREP_TIMEOUT_SECONDS = 24 * 3600.0


def init_distributed(
    device: torch.device, timeout_seconds: float | None = None, settings: Settings | None = None
) -> Distributed:
    """Join the process group torchrun describes in the environment; a no-op for a single process.

    gloo on CPU, nccl on CUDA. A rendezvous that cannot be reached fails with a clear error after the
    timeout instead of hanging. `settings`: the environment torchrun started this process with (none given: a
    single process).
    """
    settings = settings or Settings()
    world_size = settings.world_size
    if world_size <= 1:
        return Distributed()
    import torch.distributed as dist

    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if settings.get(name) is None]
    if missing:
        raise TextJepaError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch with torchrun --nproc_per_node N"
        )
    if timeout_seconds is None:
        timeout_seconds = settings.dist_timeout or DEFAULT_DIST_TIMEOUT_SECONDS
    backend = "nccl" if device.type == "cuda" else "gloo"
    where = f"{settings.get('MASTER_ADDR')}:{settings.get('MASTER_PORT')}"
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    except Exception as exc:  # rendezvous failures come as several exception types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TextJepaError(
            f"could not join the distributed job ({backend} at {where}, waited up to {timeout_seconds:.0f} s): {reason}"
        ) from exc
    info = Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=settings.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def per_rank_batch(batch: int, global_batch: int, world_size: int) -> int:
    """Lines per rank. --batch is per rank (global = batch x world size) unless --global-batch is given,
    which must divide evenly among the ranks: a silently rounded global batch would change the run."""
    if not global_batch:
        return batch
    if global_batch % world_size:
        raise TextJepaError(
            f"--global-batch {global_batch} does not divide among {world_size} processes; "
            f"use a multiple of {world_size} (or --batch, which is per process)"
        )
    per_rank = global_batch // world_size
    if per_rank < 2:
        raise TextJepaError(f"--global-batch {global_batch} leaves {per_rank} line per process; need at least 2")
    return per_rank


def broadcast_object(obj, info: Distributed):
    """Rank 0's `obj` on every rank (a no-op for a single process)."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    holder = [obj if info.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj, info: Distributed) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], info: Distributed) -> list[float]:
    """Element-wise sum of `values` over all ranks."""
    if not info.enabled:
        return list(values)
    import torch.distributed as dist

    # nccl reduces only CUDA tensors; gloo takes CPU ones.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


@contextmanager
def local_main_first(info: Distributed) -> Iterator[None]:
    """Run the body on each node's local rank 0 first, then on the other ranks of that node.

    Used for data preparation: downloads, the tokenizer and the token store are cached on disk, so they are
    built once per node (the other ranks then find them) and every rank trains with the same tokenizer. An
    error on local rank 0 still releases the others, which then meet the same error themselves.
    """
    if not info.enabled:
        yield
        return
    import torch.distributed as dist

    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=DATA_PREP_TIMEOUT_SECONDS))
    if info.local_rank != 0:
        dist.barrier(group=group)
    try:
        yield
    finally:
        if info.local_rank == 0:
            dist.barrier(group=group)


def barrier(info: Distributed) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown_distributed(info: Distributed) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
