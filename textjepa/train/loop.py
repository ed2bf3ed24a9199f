"""The one training loop every stage shares: schedules, EMA teacher, validation, checkpoints, resume, DDP.

A stage (train/latent.py, train/world.py) is "make inputs + loss": how a batch becomes the loss's inputs,
the loss module (textjepa/objectives/), what one validation batch measures and what is saved. Everything
else happens here, and the Stage protocol below is all the loop reads of a stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tokenizers import Tokenizer
from torch import nn

from textjepa.checkpoint import (
    find_latest_state,
    load_training_state,
    save_checkpoint,
    save_tokenizer_files,
    save_training_state,
)
from textjepa.config import DataConfig, ModelConfig, TrainConfig
from textjepa.data.batches import Batch, TrainSampler, UnionSampler, iter_split_batches
from textjepa.data.contract import DataContract
from textjepa.data.tokens import TokenStore, tokenizer_hash
from textjepa.errors import Interrupted, TextJepaError
from textjepa.io import RunFiles, RunKind, atomic_write_text, ensure_writable_dir, remove_stale_temp_files
from textjepa.models.encoder import count_parameters, format_size
from textjepa.precision import PrecisionChoice, autocast
from textjepa.runtime import (
    Distributed,
    all_reduce_sum,
    barrier,
    broadcast_object,
    choose_precision,
    configure_threads,
    gather_objects,
    init_distributed,
    per_rank_batch,
    resolve_device,
    shutdown_distributed,
)
from textjepa.settings import Settings
from textjepa.train.schedules import ema_momentum, lr_factor

# Validation draws its randomness (e.g. the latent stage's masks) from a generator seeded the same way on
# every pass, so that the passes of a run, and of a resumed run, measure the same thing.
VALIDATION_SEED = 12345


class Stage(Protocol):
    """Everything the loop uses of a training stage."""

    kind: RunKind
    config: ModelConfig
    tokenizer: Tokenizer
    model: nn.Module  # the trained model (its state is the training state's "model"); has .encoder
    loss: nn.Module  # holds `model`; forward(**make_inputs(...)) -> {"loss": total, term name: value, ...}
    teacher: nn.Module  # EMA copy of model.encoder, never trained by gradients
    lr_scales: dict[str, float]  # parameter-name prefix of `model` -> learning-rate multiplier
    generators: dict[str, torch.Generator]  # the stage's random generators, saved for an exact resume

    def make_inputs(self, batch: Batch, step: int) -> dict: ...

    def validation_metrics(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        """What one held-out batch measures; the loop averages over the batches of a pass."""
        ...

    def score(self, metrics: dict[str, float]) -> float:
        """The number the best checkpoint is chosen by (higher is better), from the averaged metrics."""
        ...

    def checkpoint_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]: ...

    def checkpoint_info(self) -> dict: ...

    def finish(self, best_path: Path) -> None: ...


@dataclass
class TrainResult:
    best_path: Path
    best_metrics: dict
    steps_done: int
    metrics_path: Path


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    # teacher += (1 - momentum) * (student - teacher): one fused pass over the weights.
    torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 1.0 - momentum)


def loss_own_state(loss: nn.Module) -> dict[str, torch.Tensor]:
    """The loss's tensors that are not its model's (e.g. the world loss's queue of negatives, its learned
    temperature): saved in the training state beside the model."""
    return {name: value for name, value in loss.state_dict().items() if not name.startswith("model.")}


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
    batch: Batch,
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
    only when it logs (MetricWindow), and the step itself never waits. The loss is checked to be finite there.
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
    ema_update(stage.teacher, model.encoder, ema_momentum(step, train))
    metrics = {name: value.detach() for name, value in parts.items() if name != "loss"}
    return {"loss": loss.detach(), "grad_norm": grad_norm.detach(), **metrics}


class MetricWindow:
    """The training metrics of the steps since the last log record, summed where they are computed (on the GPU
    under CUDA), so that no step waits for the device; `read()` is the one host synchronisation, at logging steps.

    A non-finite loss is found when the window is read (the loop checks the sum) or checked (`check_finite`, before
    anything is saved between log steps): the run then stops, naming the steps it happened between, and nothing
    computed after it is written.
    """

    def __init__(self, first_step: int = 0) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.tokens = 0
        self.first_step = first_step  # the last step before the window (steps first_step+1 .. are in it)
        self.started = time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor], tokens: int) -> None:
        for name, value in metrics.items():
            value = value.double()  # summed in float64, as the host summed the numbers before
            total = self.sums.get(name)
            self.sums[name] = value if total is None else total + value
        self.steps += 1
        self.tokens += tokens

    def read(self) -> dict[str, float]:
        """The summed metrics as numbers, in one transfer for all of them."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        device = self.sums[names[0]].device
        values = torch.stack([self.sums[name].to(device) for name in names]).tolist()
        return dict(zip(names, values))

    def check_finite(self) -> None:
        """Only the loss's finiteness (one small transfer): before a validation or a save between log steps."""
        if "loss" in self.sums:
            self.raise_if_not_finite(float(self.sums["loss"]))

    def raise_if_not_finite(self, loss_sum: float) -> None:
        """A loss sum of the window (under torchrun: summed over the ranks, so that every rank stops) that is
        not finite stops the run."""
        if not math.isfinite(loss_sum):
            last = self.first_step + self.steps
            where = f"at step {last}" if self.steps == 1 else f"between steps {self.first_step + 1} and {last}"
            raise TextJepaError(f"loss became {loss_sum} {where}; lower --lr")


def validate(stage: Stage, batches: Iterable[Batch], precision: str = "fp32") -> dict[str, float]:
    """One validation pass: the stage's metrics averaged over the held-out batches, and the score first."""
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    sums: dict[str, float] = {}
    count = 0
    with torch.no_grad(), autocast(next(stage.model.parameters()).device, precision):
        for batch in batches:
            for name, value in stage.validation_metrics(batch, generator).items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
    if count == 0:
        raise TextJepaError("the validation split is smaller than one batch; raise --val-fraction or lower --batch")
    metrics = {name: total / count for name, total in sums.items()}
    return {"score": stage.score(metrics), **metrics}


def run_training(
    stage: Stage,
    sampler: TrainSampler,
    validation_batches: Callable[[], Iterable[Batch]],
    train: TrainConfig,
    out_dir: Path,
    dist: Distributed,
    run_info: dict,
    data: DataContract,
    precision: PrecisionChoice | None = None,
) -> TrainResult:
    """Train `stage` for train.steps steps, validating, keeping the best checkpoint and the training state.

    `validation_batches()` gives the held-out batches of one validation pass.

    Under torchrun every rank runs this with its own shard sampler; gradients are averaged by DDP, so the
    model, optimizer and EMA teacher stay identical on all ranks. Rank 0 alone validates, logs (metrics
    averaged over the ranks) and writes files; the others wait at a barrier meanwhile.
    """
    model = stage.model
    compute = precision.precision if precision is not None else "fp32"
    if precision is not None:  # the checkpoint's info says what it was trained in (its weights are fp32 either way)
        run_info = {**run_info, **precision.info()}
    size = format_size(count_parameters(model))
    files = RunFiles.create(out_dir, stage.kind, size)
    best_path, training_state_path = files.model, files.state
    metrics_log = MetricsLog.beside(best_path)
    metrics_path = metrics_log.path

    optimizer = build_optimizer(model, train, stage.lr_scales, stage.loss)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))
    start_step, best_score, best_metrics = 0, float("-inf"), {}
    if dist.is_main:
        remove_stale_temp_files(out_dir)

    emulate = Settings.from_env().emulate_world_size
    if emulate > 1:
        if dist.enabled:
            raise TextJepaError("TEXTJEPA_EMULATE_WORLD_SIZE is for single-process runs, not under torchrun")
        sampler = UnionSampler(sampler, emulate)
    debug = DebugLog.from_env(dist)

    if dist.is_main and next(iter(validation_batches()), None) is None:
        # Checked before the first step: found at the first validation, it would cost the steps before it.
        raise TextJepaError("the validation split is smaller than one batch; raise --val-fraction or lower --batch")
    loaded = _load_resume_state(train, out_dir, stage, dist)
    # Every file of a run carries its run id (checkpoint, teacher, state, index), so a mixed set is refused.
    run_id = uuid.uuid4().hex
    if loaded is not None:
        state, source = loaded
        _load_model_state(model, state["model"], source)
        stage.teacher.load_state_dict(state["teacher"])
        _load_loss_state(stage.loss, state.get("loss", {}), source)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step, best_score, best_metrics = state["step"], state["best_score"], state["best_metrics"]
        run_id = state.get("run_id", run_id)
        note = _restore_rank_state(state, sampler, stage, dist, start_step)
        if dist.is_main:
            print(f"resumed from {source} at step {start_step}" + (f" ({note})" if note else ""))
            metrics_log.keep_until(start_step)
    elif dist.is_main:
        if train.overwrite:
            _remove_earlier_run(out_dir, stage.kind)
        metrics_log.start()
    run_info = {**run_info, "run_id": run_id}

    forward_model: nn.Module = stage.loss
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist.local_rank] if next(model.parameters()).is_cuda else None
        # find_unused_parameters: a world run with a frozen encoder leaves the encoder without gradients.
        forward_model = DistributedDataParallel(stage.loss, device_ids=device_ids, find_unused_parameters=True)
        # DDP broadcast rank 0's model; the teacher is outside it and must start identical too.
        broadcast_module(stage.teacher)
    if debug is not None:
        debug.write(
            {
                "event": "start",
                "step": start_step,
                "teacher_sha256": tensor_digest(stage.teacher.state_dict().values()),
                "optimizer_sha256": optimizer_digest(optimizer.state_dict()),
            }
        )

    if dist.is_main:
        save_tokenizer_files(files, stage.kind, stage.tokenizer)

    def save_state(step: int, rank_states: list[dict]) -> None:
        if not dist.is_main:
            return
        save_training_state(
            training_state_path,
            {
                "kind": str(stage.kind),
                "run_id": run_id,
                "config": stage.config.to_dict(),
                "tokenizer_hash": tokenizer_hash(stage.tokenizer),
                "step": step,
                "model": model.state_dict(),
                "teacher": stage.teacher.state_dict(),
                "loss": loss_own_state(stage.loss),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                # Each rank's data position, RNG and generators, so every rank resumes its own stream.
                "world_size": dist.world_size,
                "ranks": rank_states,
                "best_score": best_score,
                "best_metrics": best_metrics,
            },
        )

    bar = None
    if train.progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=train.steps, initial=start_step, desc=f"train {stage.kind}", unit="step", mininterval=0.5)
    log_every = max(1, min(train.eval_every, 10))
    run_start, tokens_per_s = time.perf_counter(), 0.0
    window = MetricWindow(start_step)
    step = start_step
    # Single-process runs stop cleanly on SIGINT/SIGTERM: the step in progress finishes, its state is written and
    # a resume continues exactly. Under torchrun the ranks cannot agree on a step, so Ctrl-C stops at once.
    stop = StopRequest() if not dist.enabled else None
    try:
        if stop is not None:
            stop.install()
        for step in range(start_step, train.steps):
            model.train()
            batch = sampler.next_batch()
            metrics = train_step(stage, optimizer, scheduler, train, batch, step, forward_model, compute)
            if debug is not None:
                debug.write(
                    {
                        "step": step + 1,
                        "records": batch.index.tolist(),
                        "loss": float(metrics["loss"]),
                        "teacher_sha256": tensor_digest(stage.teacher.state_dict().values()),
                    }
                )
            window.add(metrics, batch.real_tokens)
            done = step + 1
            if done % log_every == 0 or done == train.steps:
                # Every rank takes part: rank 0 logs the mean over ranks and the tokens of all ranks.
                sums = window.read()
                keys = sorted(sums)
                totals = all_reduce_sum([sums[k] for k in keys] + [float(window.tokens)], dist)
                window.raise_if_not_finite(totals[keys.index("loss")])
                elapsed = max(time.perf_counter() - window.started, 1e-9)
                record = {k: totals[i] / (window.steps * dist.world_size) for i, k in enumerate(keys)}
                record.update(
                    step=done, split="train", lr=scheduler.get_last_lr()[0], tokens_per_s=totals[-1] / elapsed
                )
                if dist.is_main:
                    metrics_log.append(record)
                tokens_per_s = record["tokens_per_s"]
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{tokens_per_s:.0f}")
                window = MetricWindow(done)
            if done % train.eval_every == 0 or done == train.steps:
                window.check_finite()  # between log steps: nothing computed after a non-finite loss is saved
                rank_states = gather_objects(_rank_state(sampler, stage), dist)
                if dist.is_main:
                    model.eval()
                    val = validate(stage, validation_batches(), compute)
                    metrics_log.append({"step": done, "split": "val", **val})
                    if val["score"] > best_score:
                        best_score, best_metrics = val["score"], {"step": done, **val}
                        _save_model_files(stage, files, {**run_info, "step": done, "val": val}, data)
                    save_state(done, rank_states)
                    # One line per validation, with or without the bar: a log file shows the run alive and learning.
                    elapsed = time.perf_counter() - run_start
                    eta = elapsed / (done - start_step) * (train.steps - done)
                    line = (
                        f"step {done}/{train.steps}: "
                        + ", ".join(f"{k}={v:.4f}" for k, v in val.items())
                        + f", tok/s={tokens_per_s:.0f}, elapsed {format_duration(elapsed)}, eta {format_duration(eta)}"
                    )
                    if bar is not None:
                        bar.write(line)
                    else:
                        print(line, flush=True)
                barrier(dist)
            if bar is not None:
                bar.update(1)
            if stop is not None and stop.requested and done < train.steps:
                if bar is not None:
                    bar.close()
                window.check_finite()
                save_state(done, [_rank_state(sampler, stage)])
                raise Interrupted(
                    f"{stop.requested} after step {done}; training state saved to {training_state_path}, "
                    "continue with --resume auto"
                )
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if dist.enabled:
            # The ranks may stop at different steps, so no consistent state can be gathered now.
            raise Interrupted(
                f"at step {step}; the last training state saved at a validation step is in "
                f"{training_state_path}, continue with --resume auto"
            ) from None
        # A second Ctrl-C: the step in progress is incomplete, so only the last state written is trustworthy.
        raise Interrupted(
            f"at step {step}, before the step finished; the last training state written is in "
            f"{training_state_path}, continue with --resume auto"
        ) from None
    finally:
        if stop is not None:
            stop.restore()
    if bar is not None:
        bar.close()
    if dist.is_main:
        with autocast(next(model.parameters()).device, compute):  # the world stage's retrieval index
            stage.finish(best_path)
        from textjepa.plot import plot_metrics

        plot_metrics(metrics_path, files.png)
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in best_metrics.items() if isinstance(v, float))
        print(f"best checkpoint: {best_path} (step {best_metrics.get('step')}: {metrics})")
    return TrainResult(
        best_path=best_path, best_metrics=best_metrics, steps_done=train.steps, metrics_path=metrics_path
    )


class StopRequest:
    """SIGINT/SIGTERM while training: noted, and acted on between steps. A second SIGINT interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
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


def format_duration(seconds: float) -> str:
    """1h02m, 3m05s or 42s: how long a run has taken or has left, for progress lines."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# ---------------------------------------------------------------- resume


def _resolve_resume(train: TrainConfig, out_dir: Path, kind: RunKind) -> Path | None:
    if not train.resume:
        return None
    if train.resume == "auto":
        found = find_latest_state(out_dir, kind)
        if found is None:
            print(f"--resume auto: no valid {kind} training state in {out_dir}, starting from step 0")
        return found
    return Path(train.resume)


def _load_resume_state(train: TrainConfig, out_dir: Path, stage: Stage, dist: Distributed) -> tuple[dict, Path] | None:
    """Rank 0 finds, verifies and checks the state, then hands it to every rank (so on several nodes only
    rank 0 needs the file). An error on rank 0 is raised on every rank instead of leaving them waiting."""
    if not train.resume:
        return None
    payload: tuple = ("none",)
    if dist.is_main:
        try:
            source = _resolve_resume(train, out_dir, stage.kind)
            if source is not None:
                state = load_training_state(source)
                _check_resumable(state, stage, source)
                payload = ("ok", state, source)
        except TextJepaError as exc:
            payload = ("error", str(exc))
    payload = broadcast_object(payload, dist)
    if payload[0] == "error":
        raise TextJepaError(payload[1])
    return None if payload[0] == "none" else (payload[1], payload[2])


def _load_model_state(model: nn.Module, state: dict, source: Path) -> None:
    """The model's tensors from a training state; one of another layout (e.g. written by a textjepa from
    before the losses held the models) is a clear error."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise TextJepaError(
            f"cannot resume from {source}: its model tensors are laid out otherwise ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {example}); it may come from another textjepa version"
        )
    model.load_state_dict(state)


def _load_loss_state(loss: nn.Module, saved: dict[str, torch.Tensor], source: Path) -> None:
    """The loss's own tensors; a state saved with other loss settings (a queue of another size, none) is a
    clear error rather than a silently different run."""
    expected = loss_own_state(loss)
    if set(saved) != set(expected) or any(saved[k].shape != v.shape for k, v in expected.items()):
        raise TextJepaError(
            f"cannot resume from {source}: it was saved with other loss state ({sorted(saved) or 'none'}, this run "
            f"has {sorted(expected) or 'none'}); use the loss settings it was trained with (e.g. --queue-size)"
        )
    loss.load_state_dict(saved, strict=False)  # its model's tensors are loaded with the model


def _rank_state(sampler, stage: Stage) -> dict:
    return {
        "sampler": sampler.state_dict(),
        "generators": {name: g.get_state() for name, g in stage.generators.items()},
        "torch_rng": torch.get_rng_state(),
    }


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


class MetricsLog:
    """A run's metrics, one JSON record a line (`*.metrics.jsonl` beside the model file); the training
    stages and train-bridge write theirs through it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def beside(cls, model_file: Path) -> MetricsLog:
        return cls(RunFiles(model_file).metrics)

    def start(self) -> None:
        """A fresh run starts a fresh log."""
        if self.path.exists():
            self.path.unlink()

    def append(self, record: dict) -> None:
        _append_jsonl(self.path, record)

    def keep_until(self, step: int) -> None:
        """Drop records past the resumed step (a killed run may have logged beyond its last state)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))


# ---------------------------------------------------------------- distributed helpers and debugging


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    import torch.distributed

    for tensor in list(module.parameters()) + list(module.buffers()):
        torch.distributed.broadcast(tensor.data, src=0)


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


class DebugLog:
    """TEXTJEPA_DEBUG_DIR=DIR: each rank writes rank<R>.jsonl with the record numbers it drew, its loss and a
    digest of its teacher per step, so tests can check sharding and that the teacher stays identical."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_env(cls, dist: Distributed) -> DebugLog | None:
        directory = Settings.from_env().debug_dir
        if not directory:
            return None
        Path(directory).mkdir(parents=True, exist_ok=True)
        return cls(Path(directory) / f"rank{dist.rank}.jsonl")

    def write(self, record: dict) -> None:
        _append_jsonl(self.path, record)


def _save_model_files(stage: Stage, files: RunFiles, info: dict, data: DataContract) -> None:
    online, teacher = stage.checkpoint_tensors()
    info = {**stage.checkpoint_info(), **info}
    save_checkpoint(files.model, stage.kind, "online", stage.config, online, stage.tokenizer, info, data)
    save_checkpoint(files.teacher, stage.kind, "teacher", stage.config, teacher, stage.tokenizer, info, data)


def earlier_run_files(out_dir: Path, kind: RunKind) -> list[Path]:
    """Every file of a run of this kind in out_dir (checkpoint, teacher, state, metrics, plot, index, replies)."""
    return sorted(path for path in out_dir.glob(RunFiles.run_pattern(kind)) if path.is_file())


def refuse_earlier_run(train: TrainConfig, out_dir: Path, kind: RunKind) -> None:
    """A run never silently replaces another: an out-dir that already holds a run of this kind is continued
    (--resume) or replaced (--overwrite), never trained into afresh. Checked before any work."""
    if train.overwrite:
        return
    existing = earlier_run_files(out_dir, kind)
    if not existing:
        return
    if train.resume and (train.resume != "auto" or find_latest_state(out_dir, kind) is not None):
        return
    raise TextJepaError(
        f"{out_dir} already holds a {kind} run ({existing[0].name}); continue it with --resume auto, replace it "
        "with --overwrite, or choose another --out-dir"
    )


def _remove_earlier_run(out_dir: Path, kind: RunKind) -> None:
    """--overwrite: the earlier run's files go before the new run writes its first one, so no file of it is
    ever taken for the new run's (a killed run must not leave the old index beside the new model)."""
    for path in earlier_run_files(out_dir, kind):
        path.unlink(missing_ok=True)


def _check_resumable(state: dict, stage: Stage, source: Path) -> None:
    if state.get("kind") != stage.kind:
        raise TextJepaError(f"{source} is a {state.get('kind')} training state, not {stage.kind}")
    if state["config"] != stage.config.to_dict():
        theirs, ours = state["config"], stage.config.to_dict()
        diff = ", ".join(f"{k}: {theirs.get(k)} != {ours.get(k)}" for k in ours if theirs.get(k) != ours.get(k))
        raise TextJepaError(f"cannot resume from {source}: the model shape differs ({diff})")
    if state["tokenizer_hash"] != tokenizer_hash(stage.tokenizer):
        raise TextJepaError(f"cannot resume from {source}: it was trained with another tokenizer")


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def describe_run(train: TrainConfig) -> dict:
    """What a checkpoint records about its run's settings (its data contract is recorded beside them)."""
    return {"train": dataclasses.asdict(train)}


@contextmanager
def training_session(
    train: TrainConfig, kind: RunKind, dim: int | None = None
) -> Iterator[tuple[torch.device, Distributed, Path, PrecisionChoice]]:
    """What every training command does first: threads, device, precision (stated on the run's first line),
    process group (torchrun), this rank's batch, a writable output directory that holds no earlier run of
    this kind (unless resumed or --overwrite); the process group is shut down however the run ends."""
    configure_threads()
    device = resolve_device(train.device)
    precision = choose_precision(train.precision, device, dim=dim)  # dim: the model's width where known
    dist = init_distributed(device)
    try:
        train.batch = per_rank_batch(train.batch, train.global_batch, dist.world_size)
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        out_dir = Path(train.out_dir)
        ensure_writable_dir(out_dir)
        refuse_earlier_run(train, out_dir, kind)
        if dist.is_main:
            print(precision.describe(), flush=True)
        yield device, dist, out_dir, precision
    finally:
        shutdown_distributed(dist)


def train_on_store(
    stage: Stage,
    store: TokenStore,
    path: Path,
    data: DataConfig,
    train: TrainConfig,
    max_seq: int,
    out_dir: Path,
    dist: Distributed,
    precision: PrecisionChoice | None = None,
) -> TrainResult:
    """This rank's share of the training split, batched, through the shared loop; validation on the
    held-out split (the first train.eval_batches batches, the same on every pass)."""
    contract = DataContract.for_training(data, max_seq, train.seed, str(path), store.corpus_hash)
    sampler = TrainSampler(
        store,
        train.batch,
        contract.max_seq,
        contract.val_fraction,
        contract.seed,
        train.bucket_by_length,
        rank=dist.rank,
        world_size=dist.world_size,
    )

    def validation_batches() -> Iterator[Batch]:
        return iter_split_batches(
            store,
            train.batch,
            contract.max_seq,
            "val",
            contract.val_fraction,
            contract.seed,
            max_batches=train.eval_batches,
        )

    return run_training(
        stage, sampler, validation_batches, train, out_dir, dist, describe_run(train), contract, precision
    )
