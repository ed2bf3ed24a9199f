"""Testing aids of the training loop, given as parameters (the CLI fills them from TEXTJEPA_EMULATE_WORLD_SIZE
and TEXTJEPA_DEBUG_DIR): one process drawing the batches of N torchrun processes, and per-rank logs of what each
rank drew, its loss and a digest of its teacher, so tests can check sharding and that the teachers stay equal."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from textjepa.data.batches import TrainSampler, UnionSampler
from textjepa.errors import TextJepaError
from textjepa.runtime import Distributed
from textjepa.settings import Settings
from textjepa.train.checkpointer import append_jsonl


@dataclass(frozen=True)
class DebugOptions:
    emulate_world_size: int = 1  # >1: this single process draws the union of N ranks' batches
    debug_dir: str | None = None  # each rank writes rank<R>.jsonl here

    @classmethod
    def from_settings(cls, settings: Settings) -> DebugOptions:
        return cls(settings.emulate_world_size, settings.debug_dir)

    def sampler(self, sampler: TrainSampler, dist: Distributed) -> TrainSampler:
        if self.emulate_world_size <= 1:
            return sampler
        if dist.enabled:
            raise TextJepaError("TEXTJEPA_EMULATE_WORLD_SIZE is for single-process runs, not under torchrun")
        return UnionSampler(sampler, self.emulate_world_size)

    def log(self, dist: Distributed) -> DebugLog | None:
        if not self.debug_dir:
            return None
        Path(self.debug_dir).mkdir(parents=True, exist_ok=True)
        return DebugLog(Path(self.debug_dir) / f"rank{dist.rank}.jsonl")


class DebugLog:
    """rank<R>.jsonl: a start record (teacher and optimizer digests, so a resume can be checked), then per step the
    record numbers drawn, the loss and the teacher's digest."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def started(self, step: int, teacher: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.write(
            {
                "event": "start",
                "step": step,
                "teacher_sha256": tensor_digest(teacher.state_dict().values()),
                "optimizer_sha256": optimizer_digest(optimizer.state_dict()),
            }
        )

    def stepped(self, step: int, records: list[int], loss: float, teacher: torch.nn.Module) -> None:
        self.write(
            {
                "step": step,
                "records": records,
                "loss": loss,
                "teacher_sha256": tensor_digest(teacher.state_dict().values()),
            }
        )

    def write(self, record: dict) -> None:
        append_jsonl(self.path, record)


def tensor_digest(tensors) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def optimizer_digest(optimizer_state: dict) -> str:
    """A digest of the optimizer's per-parameter state (moments, step counts)."""
    tensors = []
    for index in sorted(optimizer_state["state"]):
        for key in sorted(optimizer_state["state"][index]):
            value = optimizer_state["state"][index][key]
            tensors.append(value if torch.is_tensor(value) else torch.tensor(float(value)))
    return tensor_digest(tensors)
