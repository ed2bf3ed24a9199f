"""The one training loop every stage shares, read top to bottom in `run_training`.

A stage (train/latent.py, train/world.py, bridge/train.py) is "make inputs + loss": how a batch becomes the loss's
inputs, the loss module (textjepa/objectives/), what one validation batch measures and how its best checkpoint is
written. The loop calls units for the rest: the checkpointer (best checkpoint, training state, metrics log;
train/checkpointer.py), the validator (train/validator.py), resume and interrupts (train/resume.py), progress
(train/progress.py) and the testing aids (train/debug.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from textjepa.config import TrainConfig
from textjepa.precision import autocast
from textjepa.runtime import Distributed, barrier, gather_objects
from textjepa.train.checkpointer import Checkpointer, MetricsLog
from textjepa.train.debug import DebugLog
from textjepa.train.progress import Progress
from textjepa.train.resume import (
    StopRequest,
    interrupted_at_once,
    load_resume_state,
    rank_state,
    restore,
    training_state,
)
from textjepa.train.schedules import ema_momentum, lr_factor
from textjepa.train.validator import Validator


class Stage:
    """Everything the loop uses of a training stage. A stage sets `kind`, `model` (the trained module; gradients
    are clipped over its parameters) and `loss` (holds `model`; forward(**make_inputs(batch, step)) ->
    {"loss": total, term name: value, ...}), and implements make_inputs, validation_metrics and score.

    The defaults are the JEPA stages': an EMA `teacher` of model.encoder, AdamW without weight decay on biases and
    norms (`lr_scales`: parameter-name prefix -> learning-rate multiplier), the warmup-flat-cosine schedule, a log
    record every min(eval_every, 10) steps. A run that resumes also reads `config`, `tokenizer` and `generators`
    (the stage's random generators, saved for an exact resume); its checkpointer reads checkpoint_tensors/info.
    """

    kind: str
    model: nn.Module
    loss: nn.Module
    teacher: nn.Module | None = None  # EMA copy of model.encoder, never trained by gradients
    lr_scales: dict[str, float] | None = None
    # A part of `model` (a state-dict name prefix) that never trains: the training state keeps its digest, not its
    # weights (train-world's frozen backbone).
    fixed_prefix: str | None = None
    generators: dict[str, torch.Generator]
    log_every: int | None = None  # None: min(eval_every, 10)
    validate_first = False  # a validation (and best checkpoint) before the first step of a fresh run

    def build_optimizer(self, train: TrainConfig) -> torch.optim.Optimizer:
        return build_optimizer(self.model, train, self.lr_scales, self.loss)

    def schedule(self, train: TrainConfig) -> Callable[[int], float]:
        """The learning-rate multiplier of each step."""
        return partial(lr_factor, train=train)

    def begin(self, log: MetricsLog) -> None:
        """Work before the first step of a fresh run (train-bridge's alignment stage), logged to the run's log."""

    def make_inputs(self, batch: Any, step: int) -> dict:
        raise NotImplementedError

    def validation_metrics(self, batch: Any, generator: torch.Generator) -> dict[str, float]:
        """What one held-out batch measures; the loop averages over the batches of a pass."""
        raise NotImplementedError

    def score(self, metrics: dict[str, float]) -> float:
        """The number the best checkpoint is chosen by (higher is better), from the averaged metrics."""
        raise NotImplementedError

    def finish(self, best_path: Path, precision: str) -> dict | None:
        """After the last step, on rank 0, computing at `precision` (the world stage's retrieval index and final
        evaluation); returns that evaluation's report, if the stage makes one."""
        return None


@dataclass
class TrainResult:
    best_path: Path
    best_metrics: dict
    steps_done: int
    metrics_path: Path
    # The stage's final evaluation of the best checkpoint (train-world: eval-world's report), on rank 0.
    evaluation: dict | None = None


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    # teacher += (1 - momentum) * (student - teacher): one fused pass over the weights.
    torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 1.0 - momentum)


def build_optimizer(
    model: nn.Module,
    train: TrainConfig,
    lr_scales: dict[str, float] | None = None,
    loss: nn.Module | None = None,
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms. lr_scales: submodule name prefix -> lr multiplier
    (a pretrained encoder fine-tuned more gently than freshly initialised heads). The loss's own parameters
    (a learned temperature), if any, form a last group without weight decay."""
    lr_scales = lr_scales or {}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((s for prefix, s in lr_scales.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((scale, param.dim() >= 2), []).append(param)
    own = [p for name, p in (loss.named_parameters() if loss is not None else []) if not name.startswith("model.")]
    return torch.optim.AdamW(
        [
            {"params": params, "lr": train.lr * scale, "weight_decay": train.weight_decay if decays else 0.0}
            for (scale, decays), params in sorted(groups.items(), key=lambda item: item[0])
        ]
        + ([{"params": own, "lr": train.lr, "weight_decay": 0.0}] if own else []),
        lr=train.lr,
        betas=(0.9, 0.98),
        # The fused kernel (CPU and CUDA) is 3-4x faster than the per-tensor loop: on CPU the default AdamW
        # step of the 9.6M-parameter default model took ~15% of a training step.
        fused=True if next(model.parameters()).device.type in ("cpu", "cuda") else None,
    )


def train_step(
    stage: Stage,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: TrainConfig,
    batch: Any,
    step: int,
    forward_model: nn.Module | None = None,
    precision: str = "fp32",
) -> dict[str, torch.Tensor]:
    """One optimisation step: inputs (teacher targets included), forward, backward, clip, update, EMA.

    `forward_model` is the DDP wrapper of the stage's loss under torchrun (it averages the gradients).
    `precision` "bf16": the teacher's and the model's forwards run under one autocast region (the casts of the
    weights are cached across it); backward follows autocast's dtypes, and the fp32 weights, their gradients,
    AdamW and the EMA stay fp32. bench/train_throughput.py times exactly this function.

    Returns the loss, the gradient norm and the loss's parts as detached 0-dim tensors where they were computed,
    not as numbers: reading a number off a CUDA tensor makes the host wait for the GPU, so the loop reads them
    only when it logs (progress.MetricWindow), and the step itself never waits. The loss is checked to be finite
    there.
    """
    model = stage.model
    with autocast(next(model.parameters()).device, precision):
        inputs = stage.make_inputs(batch, step)
        parts = (forward_model or stage.loss)(**inputs)
    loss = parts["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    optimizer.step()
    scheduler.step()
    if stage.teacher is not None:
        ema_update(stage.teacher, model.encoder, ema_momentum(step, train))
    metrics = {name: value.detach() for name, value in parts.items() if name != "loss"}
    return {"loss": loss.detach(), "grad_norm": grad_norm.detach(), **metrics}


def run_training(
    stage: Stage,
    sampler,
    validator: Validator | None,
    checkpointer: Checkpointer,
    train: TrainConfig,
    dist: Distributed | None = None,
    precision: str = "fp32",
    debug: DebugLog | None = None,
) -> TrainResult:
    """Train `stage` for train.steps steps from `sampler` (next_batch()), validating every train.eval_every steps
    and at the last, keeping the best checkpoint and (a run that can resume) the training state. No validator:
    the last step's model is the one kept.

    Under torchrun every rank runs this with its own shard sampler; gradients are averaged by DDP, so the
    model, optimizer and EMA teacher stay identical on all ranks. Rank 0 alone validates, logs (metrics
    averaged over the ranks) and writes files; the others wait at a barrier meanwhile.
    """
    dist = dist or Distributed()
    model = stage.model
    optimizer = stage.build_optimizer(train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, stage.schedule(train))
    if validator is not None and dist.is_main:
        validator.check_not_empty()
    loaded = None
    if checkpointer.can_resume:
        loaded = load_resume_state(train, checkpointer.out_dir, stage, dist, checkpointer.check_resume)
    start_step = restore(*loaded, stage, optimizer, scheduler, sampler, dist) if loaded else 0
    if dist.is_main:
        checkpointer.start(loaded[0] if loaded else None)
    forward_model = distributed_loss(stage, dist)
    # What the testing aids digest: the EMA teacher, or the encoder of a stage without one (its own teacher).
    teacher = stage.teacher if stage.teacher is not None else model
    if debug is not None:
        debug.started(start_step, teacher, optimizer)
    log_every = stage.log_every or max(1, min(train.eval_every, 10))
    progress = Progress(str(stage.kind), train.steps, start_step, log_every, dist, checkpointer.log, train.progress)

    def validate_and_save(done: int) -> None:
        progress.check_finite()  # nothing computed after a non-finite loss is saved
        ranks = gather_objects(rank_state(sampler, stage), dist) if checkpointer.can_resume else []
        if dist.is_main:
            val = validator()
            checkpointer.validated(done, val)
            if checkpointer.can_resume:
                run_id = checkpointer.run_id
                checkpointer.save_state(training_state(stage, optimizer, scheduler, done, run_id, dist, ranks))
            progress.validated(done, val)
        barrier(dist)

    if start_step == 0:
        stage.begin(checkpointer.log)
        if stage.validate_first and validator is not None:
            validate_and_save(0)
    # Single-process runs that can resume stop cleanly on SIGINT/SIGTERM: the step in progress finishes, its state
    # is written and a resume continues exactly. Under torchrun the ranks cannot agree on a step: Ctrl-C stops at once.
    stop = StopRequest(enabled=checkpointer.can_resume and not dist.enabled)
    step, record = start_step, {}
    try:
        stop.install()
        for step in range(start_step, train.steps):
            model.train()
            batch = sampler.next_batch()
            metrics = train_step(stage, optimizer, scheduler, train, batch, step, forward_model, precision)
            done = step + 1
            if debug is not None:
                debug.stepped(done, batch.index.tolist(), float(metrics["loss"]), teacher)
            record = progress.step_done(done, metrics, batch.real_tokens, scheduler.get_last_lr()[0]) or record
            if validator is not None and (done % train.eval_every == 0 or done == train.steps):
                validate_and_save(done)
            progress.advance()
            if stop.requested and done < train.steps:
                progress.close()
                progress.check_finite()
                state = training_state(
                    stage, optimizer, scheduler, done, checkpointer.run_id, dist, [rank_state(sampler, stage)]
                )
                checkpointer.save_state(state)
                raise stop.stopped(done, checkpointer.state_path)
    except KeyboardInterrupt:
        progress.close()
        if not checkpointer.can_resume:
            raise
        raise interrupted_at_once(step, dist, checkpointer.state_path) from None
    finally:
        stop.restore()
    progress.close()
    evaluation = None
    if dist.is_main:
        if validator is None:
            checkpointer.keep_last(train.steps, record)
        with autocast(next(model.parameters()).device, precision):
            evaluation = stage.finish(checkpointer.best_path, precision)
        checkpointer.finish()
    return TrainResult(
        checkpointer.best_path, checkpointer.best_metrics, train.steps, checkpointer.log.path, evaluation
    )


def distributed_loss(stage: Stage, dist: Distributed) -> nn.Module:
    """What the step calls forward on: the stage's loss, or under torchrun its DDP wrapper (which averages the
    gradients over the ranks); the EMA teacher, outside it, starts as rank 0's too."""
    if not dist.enabled:
        return stage.loss
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dist.local_rank] if next(stage.model.parameters()).is_cuda else None
    # find_unused_parameters: a world run with a frozen encoder leaves the encoder without gradients.
    wrapped = DistributedDataParallel(stage.loss, device_ids=device_ids, find_unused_parameters=True)
    if stage.teacher is not None:
        broadcast_module(stage.teacher)  # DDP broadcast rank 0's model; the teacher must start identical too
    return wrapped


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    import torch.distributed

    for tensor in list(module.parameters()) + list(module.buffers()):
        torch.distributed.broadcast(tensor.data, src=0)
