"""The one training loop every stage shares: schedules, EMA teacher, validation, checkpoints, resume, DDP.

A stage (train/latent.py, train/world.py) says what differs: how a batch becomes model inputs, what
the model's loss is, how it is validated and what is saved. Everything else happens here.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tokenizers import Tokenizer
from torch import nn

from textjepa.checkpoint import (
    find_latest_state,
    load_training_state,
    model_path,
    save_checkpoint,
    save_tokenizer_files,
    save_training_state,
    state_path,
    teacher_path,
)
from textjepa.config import ModelConfig, TrainConfig
from textjepa.data.batches import Batch, TrainSampler
from textjepa.data.tokens import tokenizer_hash
from textjepa.errors import TextJepaError
from textjepa.models.encoder import count_parameters, format_size
from textjepa.runtime import Distributed
from textjepa.train.schedules import ema_momentum, lr_factor


class Stage(Protocol):
    kind: str
    config: ModelConfig
    tokenizer: Tokenizer
    model: nn.Module  # the trainable parts; forward(**inputs) -> (loss, metrics)
    teacher: nn.Module  # EMA copy of model.encoder, never trained by gradients

    def make_inputs(self, batch: Batch, step: int) -> dict: ...

    def validate(self) -> dict: ...

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
    teacher_params = list(teacher.parameters())
    student_params = list(student.parameters())
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)


def build_optimizer(
    model: nn.Module, train: TrainConfig, lr_scales: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms. lr_scales: submodule name prefix -> lr multiplier
    (a pretrained encoder fine-tuned more gently than freshly initialised heads)."""
    lr_scales = lr_scales or {}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((s for prefix, s in lr_scales.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((scale, param.dim() >= 2), []).append(param)
    return torch.optim.AdamW(
        [
            {"params": params, "lr": train.lr * scale, "weight_decay": train.weight_decay if decays else 0.0}
            for (scale, decays), params in sorted(groups.items(), key=lambda item: item[0])
        ],
        lr=train.lr,
        betas=(0.9, 0.98),
    )


def _resolve_resume(train: TrainConfig, out_dir: Path, kind: str) -> Path | None:
    if not train.resume:
        return None
    if train.resume == "auto":
        found = find_latest_state(out_dir, kind)
        if found is None:
            print(f"--resume auto: no valid {kind} training state in {out_dir}, starting from step 0")
        return found
    return Path(train.resume)


def run_training(
    stage: Stage,
    sampler: TrainSampler,
    train: TrainConfig,
    out_dir: Path,
    dist: Distributed,
    run_info: dict,
) -> TrainResult:
    model = stage.model
    size = format_size(count_parameters(model))
    best_path = model_path(out_dir, stage.kind, size)
    training_state_path = state_path(best_path)
    metrics_path = best_path.with_name(best_path.name.replace(".safetensors", ".metrics.jsonl"))

    optimizer = build_optimizer(model, train, getattr(stage, "lr_scales", None))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))
    start_step, best_score, best_metrics = 0, float("-inf"), {}

    resume_from = _resolve_resume(train, out_dir, stage.kind)
    if resume_from is not None:
        state = load_training_state(resume_from)
        _check_resumable(state, stage, resume_from)
        model.load_state_dict(state["model"])
        stage.teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        start_step, best_score, best_metrics = state["step"], state["best_score"], state["best_metrics"]
        if dist.is_main:
            print(f"resumed from {resume_from} at step {start_step}")
    elif dist.is_main and metrics_path.exists():
        metrics_path.unlink()  # a fresh run starts a fresh log

    forward_model: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [dist.local_rank] if next(model.parameters()).is_cuda else None
        forward_model = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    if dist.is_main:
        save_tokenizer_files(out_dir, stage.kind, stage.tokenizer)

    def save_state(step: int) -> None:
        if not dist.is_main:
            return
        save_training_state(
            training_state_path,
            {
                "kind": stage.kind,
                "config": stage.config.to_dict(),
                "tokenizer_hash": tokenizer_hash(stage.tokenizer),
                "step": step,
                "model": model.state_dict(),
                "teacher": stage.teacher.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sampler": sampler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "best_score": best_score,
                "best_metrics": best_metrics,
            },
        )

    bar = None
    if train.progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=train.steps, initial=start_step, desc=f"train {stage.kind}", unit="step", mininterval=0.5)
    log_every = max(1, min(train.eval_every, 10))
    window: dict[str, float] = {}
    window_steps, window_tokens, window_start = 0, 0, time.perf_counter()
    step = start_step
    try:
        for step in range(start_step, train.steps):
            model.train()
            batch = sampler.next_batch()
            inputs = stage.make_inputs(batch, step)
            loss, metrics = forward_model(**inputs)
            if not torch.isfinite(loss):
                raise TextJepaError(f"loss became {float(loss)} at step {step}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            scheduler.step()
            ema_update(stage.teacher, model.encoder, ema_momentum(step, train))

            metrics = {"loss": float(loss.detach()), "grad_norm": float(grad_norm), **metrics}
            for key, value in metrics.items():
                window[key] = window.get(key, 0.0) + value
            window_steps += 1
            window_tokens += batch.real_tokens * dist.world_size
            done = step + 1
            if done % log_every == 0 or done == train.steps:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                record = {k: v / window_steps for k, v in window.items()}
                record.update(
                    step=done, split="train", lr=scheduler.get_last_lr()[0], tokens_per_s=window_tokens / elapsed
                )
                if dist.is_main:
                    _append_jsonl(metrics_path, record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                window, window_steps, window_tokens, window_start = {}, 0, 0, time.perf_counter()
            if done % train.eval_every == 0 or done == train.steps:
                if dist.is_main:
                    model.eval()
                    val = stage.validate()
                    _append_jsonl(metrics_path, {"step": done, "split": "val", **val})
                    if val["score"] > best_score:
                        best_score, best_metrics = val["score"], {"step": done, **val}
                        _save_model_files(stage, best_path, {**run_info, "step": done, "val": val})
                    save_state(done)
                    if bar is not None:
                        bar.write(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in val.items()))
                if dist.enabled:
                    torch.distributed.barrier()
            if bar is not None:
                bar.update(1)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        save_state(step)
        raise TextJepaError(
            f"interrupted at step {step}; training state saved to {training_state_path}, continue with --resume auto"
        ) from None
    if bar is not None:
        bar.close()
    if dist.is_main:
        stage.finish(best_path)
        from textjepa.plot import plot_metrics

        plot_metrics(metrics_path, metrics_path.with_suffix(".png"))
    return TrainResult(
        best_path=best_path, best_metrics=best_metrics, steps_done=train.steps, metrics_path=metrics_path
    )


def _save_model_files(stage: Stage, path: Path, info: dict) -> None:
    online, teacher = stage.checkpoint_tensors()
    info = {**stage.checkpoint_info(), **info}
    save_checkpoint(path, stage.kind, "online", stage.config, online, stage.tokenizer, info)
    save_checkpoint(teacher_path(path), stage.kind, "teacher", stage.config, teacher, stage.tokenizer, info)


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


def config_summary(obj) -> dict:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
