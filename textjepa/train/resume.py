"""Stopping and continuing a run: the training state (what it holds, how it is checked and put back) and the
interrupts (SIGINT/SIGTERM between steps; a second Ctrl-C at once).

A resumed run continues exactly as the uninterrupted one would have: model, teacher, the loss's own state,
optimizer, schedule, and each rank's data position, RNG and generators come back from the state.
"""

from __future__ import annotations

import hashlib
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from textjepa.checkpoint import find_latest_state, load_training_state
from textjepa.config import TrainConfig
from textjepa.data.tokens import tokenizer_hash
from textjepa.errors import Interrupted, TextJepaError
from textjepa.io import RunKind
from textjepa.runtime import Distributed, broadcast_object

if TYPE_CHECKING:
    from textjepa.train.loop import Stage


def loss_own_state(loss: nn.Module) -> dict[str, torch.Tensor]:
    """The loss's tensors that are not its model's (e.g. the world loss's queue of negatives, its learned
    temperature): saved in the training state beside the model."""
    return {name: value for name, value in loss.state_dict().items() if not name.startswith("model.")}


def training_state(
    stage: Stage,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    run_id: str,
    dist: Distributed,
    ranks: list[dict],
) -> dict:
    """Everything a resume needs (the checkpointer adds the best score so far). A part of the model that never
    trains (stage.fixed_prefix: train-world's frozen backbone) is recorded by its digest, not its weights: the
    resumed run rebuilds it from where the run started (the backbone, --init-encoder) and checks the digest."""
    model, fixed = split_fixed(stage.model.state_dict(), stage.fixed_prefix)
    return {
        "kind": str(stage.kind),
        "run_id": run_id,
        "config": stage.config.to_dict(),
        "tokenizer_hash": tokenizer_hash(stage.tokenizer),
        "step": step,
        "model": model,
        "fixed": {"prefix": stage.fixed_prefix, "sha256": fixed_digest(fixed)} if stage.fixed_prefix else None,
        # None: the stage has no EMA teacher (train-world's frozen mode, whose encoder is its own teacher).
        "teacher": stage.teacher.state_dict() if stage.teacher is not None else None,
        "loss": loss_own_state(stage.loss),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        # Each rank's data position, RNG and generators, so every rank resumes its own stream.
        "world_size": dist.world_size,
        "ranks": ranks,
    }


def split_fixed(
    state: dict[str, torch.Tensor], prefix: str | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A model's state dict as (what trains, the fixed part under `prefix`; empty without one)."""
    if not prefix:
        return dict(state), {}
    fixed = {name: value for name, value in state.items() if name.startswith(prefix)}
    return {name: value for name, value in state.items() if name not in fixed}, fixed


def fixed_digest(tensors: dict[str, torch.Tensor]) -> str:
    """The fixed part's names, shapes and weights in one hash."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rank_state(sampler, stage: Stage) -> dict:
    return {
        "sampler": sampler.state_dict(),
        "generators": {name: g.get_state() for name, g in stage.generators.items()},
        "torch_rng": torch.get_rng_state(),
    }


def load_resume_state(
    train: TrainConfig,
    out_dir: Path,
    stage: Stage,
    dist: Distributed,
    check: Callable[[dict, Path], None] | None = None,
) -> tuple[dict, Path] | None:
    """Rank 0 finds, verifies and checks the state, then hands it to every rank (so on several nodes only
    rank 0 needs the file). An error on rank 0 is raised on every rank instead of leaving them waiting.
    check(state, source): the checkpointer's own check first (the data file and the settings the run records)."""
    if not train.resume:
        return None
    payload: tuple = ("none",)
    if dist.is_main:
        try:
            source = _resolve_resume(train, out_dir, stage.kind)
            if source is not None:
                state = load_training_state(source)
                if check is not None:
                    check(state, source)
                _check_resumable(state, stage, source)
                payload = ("ok", state, source)
        except TextJepaError as exc:
            payload = ("error", str(exc))
    payload = broadcast_object(payload, dist)
    if payload[0] == "error":
        raise TextJepaError(payload[1])
    return None if payload[0] == "none" else (payload[1], payload[2])


def restore(
    state: dict,
    source: Path,
    stage: Stage,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler,
    dist: Distributed,
) -> int:
    """Puts a training state back; returns the step it was saved at."""
    check_fixed_part(stage, state.get("fixed"), source)
    load_model_state(stage.model, state["model"], source, (state.get("fixed") or {}).get("prefix"))
    if (stage.teacher is None) != (state["teacher"] is None):
        raise TextJepaError(
            f"cannot resume from {source}: it was saved {'without' if state['teacher'] is None else 'with'} an EMA "
            "teacher (another --backbone-mode)"
        )
    if stage.teacher is not None:
        stage.teacher.load_state_dict(state["teacher"])
    load_loss_state(stage.loss, state.get("loss", {}), source)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    step = state["step"]
    note = _restore_rank_state(state, sampler, stage, dist, step)
    if dist.is_main:
        print(f"resumed from {source} at step {step}" + (f" ({note})" if note else ""))
    return step


def _resolve_resume(train: TrainConfig, out_dir: Path, kind: RunKind) -> Path | None:
    if train.resume == "auto":
        found = find_latest_state(out_dir, kind)
        if found is None:
            print(f"--resume auto: no valid {kind} training state in {out_dir}, starting from step 0")
        return found
    return Path(train.resume)


def _check_resumable(state: dict, stage: Stage, source: Path) -> None:
    if state.get("kind") != stage.kind:
        raise TextJepaError(f"{source} is a {state.get('kind')} training state, not {stage.kind}")
    if state["config"] != stage.config.to_dict():
        theirs, ours = state["config"], stage.config.to_dict()
        diff = ", ".join(f"{k}: {theirs.get(k)} != {ours.get(k)}" for k in ours if theirs.get(k) != ours.get(k))
        raise TextJepaError(f"cannot resume from {source}: the model shape differs ({diff})")
    if state["tokenizer_hash"] != tokenizer_hash(stage.tokenizer):
        raise TextJepaError(f"cannot resume from {source}: it was trained with another tokenizer")


def check_fixed_part(stage: Stage, fixed: dict | None, source: Path) -> None:
    """A state that left out the model's fixed part resumes only where that part is as the run had it: the same
    backbone or --init-encoder weights, still fixed (a state of a run that trained it has its weights)."""
    if fixed is None:
        return
    if fixed["prefix"] != stage.fixed_prefix:
        raise TextJepaError(
            f"cannot resume from {source}: it was saved with its {fixed['prefix'].rstrip('.')} frozen and this run "
            "trains it (another --backbone-mode)"
        )
    if fixed_digest(split_fixed(stage.model.state_dict(), fixed["prefix"])[1]) != fixed["sha256"]:
        raise TextJepaError(
            f"cannot resume from {source}: the frozen {fixed['prefix'].rstrip('.')} this run starts from has other "
            "weights than the run's (another --backbone or --init-encoder file)"
        )


def load_model_state(model: nn.Module, state: dict, source: Path, fixed_prefix: str | None = None) -> None:
    """The model's tensors from a training state; one of another layout (e.g. written by a textjepa from
    before the losses held the models) is a clear error. fixed_prefix: the part the state left out (checked by
    check_fixed_part; it stays as built)."""
    expected = set(split_fixed(model.state_dict(), fixed_prefix)[0])
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise TextJepaError(
            f"cannot resume from {source}: its model tensors are laid out otherwise ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {example}); it may come from another textjepa version"
        )
    model.load_state_dict(state, strict=fixed_prefix is None)


def load_loss_state(loss: nn.Module, saved: dict[str, torch.Tensor], source: Path) -> None:
    """The loss's own tensors; a state saved with other loss settings (a queue of another size, none) is a
    clear error rather than a silently different run."""
    expected = loss_own_state(loss)
    if set(saved) != set(expected) or any(saved[k].shape != v.shape for k, v in expected.items()):
        raise TextJepaError(
            f"cannot resume from {source}: it was saved with other loss state ({sorted(saved) or 'none'}, this run "
            f"has {sorted(expected) or 'none'}); use the loss settings it was trained with (e.g. --queue-size)"
        )
    # Copied tensor by tensor, not by loss.load_state_dict(strict=False): that would also walk the model inside
    # the loss, whose encoder fills the pooling tensors a state lacks with their defaults (for a JEPA checkpoint),
    # so a world model's pooling weights would be reset to uniform on every resume.
    with torch.no_grad():
        for name, tensor in expected.items():
            tensor.copy_(saved[name])


def _restore_rank_state(state: dict, sampler, stage: Stage, dist: Distributed, step: int) -> str:
    """Put this rank's data position and RNGs back; returns a note when that is not possible exactly."""
    saved_world = state.get("world_size", 1)
    if saved_world != dist.world_size or "ranks" not in state:
        sampler.restart_stream(step)
        return (
            f"the state was saved by {saved_world} process(es), this run has {dist.world_size}: "
            "each rank's data stream restarts from this step"
        )
    mine = state["ranks"][dist.rank]
    try:
        sampler.load_state_dict(mine["sampler"])
    except (KeyError, ValueError, TypeError):
        sampler.restart_stream(step)
        return "the saved data position is of another sampler kind; the data stream restarts"
    generators = stage.generators
    for name, generator_state in mine["generators"].items():
        if name in generators:
            generators[name].set_state(generator_state)
    torch.set_rng_state(mine["torch_rng"])
    return ""


# ---------------------------------------------------------------- interrupts


class StopRequest:
    """SIGINT/SIGTERM while training: noted, and acted on between steps. A second SIGINT interrupts at once.

    Only single-process runs that can resume install it: under torchrun the ranks cannot agree on a step, and
    a run without a training state (train-bridge) has nothing to save, so Ctrl-C stops those at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not when run from a server)
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, number: int, frame) -> None:
        self.requested = signal.Signals(number).name
        print(f"{self.requested}: stopping after this step (Ctrl-C again to stop at once)", flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def stopped(self, done: int, state_path: Path | None) -> Interrupted:
        """The error a run stops with once the state after step `done` is saved."""
        return Interrupted(
            f"{self.requested} after step {done}; training state saved to {state_path}, continue with --resume auto"
        )


def interrupted_at_once(step: int, dist: Distributed, state_path: Path) -> Interrupted:
    """Ctrl-C in the middle of a step (or under torchrun): where the last trustworthy state is."""
    if dist.enabled:
        # The ranks may stop at different steps, so no consistent state can be gathered now.
        return Interrupted(
            f"at step {step}; the last training state saved at a validation step is in "
            f"{state_path}, continue with --resume auto"
        )
    # A second Ctrl-C: the step in progress is incomplete, so only the last state written is trustworthy.
    return Interrupted(
        f"at step {step}, before the step finished; the last training state written is in "
        f"{state_path}, continue with --resume auto"
    )
