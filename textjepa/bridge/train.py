"""train-bridge: learn the prefix projector with the LLM and the world model frozen.

Loss: the LM's mean per-token NLL of the true next turn given (soft prefix from the world model's
predicted next latent + the chat-templated context). Only the projector trains (AdamW, gradient
clipping, warmup then cosine decay). The world model's predictions are computed once up front.
Model selection uses a few pairs of the world model's *training* split kept out of bridge training,
so the world model's validation split stays untouched for eval-conditioning.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch

from textjepa.bridge.align import align_projector
from textjepa.bridge.data import LMExample, conditioning_latents, derangement, lm_examples, read_pairs, split_pairs
from textjepa.bridge.scoring import reply_nll
from textjepa.config import BridgeTrainConfig
from textjepa.data.sources import resolve_data
from textjepa.decoders.hf_model import CausalLM, load_causal_lm
from textjepa.decoders.models import resolve_decoder_model
from textjepa.decoders.prefix_bridge import (
    Bridge,
    PrefixProjector,
    save_bridge,
    world_identity,
)
from textjepa.decoders.prompting import context_messages, truncate_left
from textjepa.errors import TextJepaError
from textjepa.inference.world import WorldInference
from textjepa.io import RunFiles, RunKind, ensure_writable_dir
from textjepa.precision import autocast
from textjepa.runtime import choose_precision, configure_threads, resolve_device, seed_everything
from textjepa.train.loop import MetricsLog, format_duration
from textjepa.train.schedules import warmup_cosine


def mean_nll(
    lm: CausalLM,
    projector: PrefixProjector,
    examples: list[LMExample],
    latents: torch.Tensor | None,
    batch: int,
    precision: str = "fp32",
) -> float:
    """Token-weighted mean NLL; latents None means no prefix at all."""
    total, count = 0.0, 0.0
    with torch.no_grad(), autocast(lm.device, precision):
        for start in range(0, len(examples), batch):
            rows = examples[start : start + batch]
            prefix = None if latents is None else projector(latents[start : start + batch])
            sums, counts = reply_nll(lm, prefix, [r.prompt_ids for r in rows], [r.reply_ids for r in rows])
            total += float(sums.sum())
            count += float(counts.sum())
    return total / max(1.0, count)


def default_bridge_path(out_dir: Path, lm_name: str, world_file: str) -> Path:
    lm_stem = lm_name.rsplit(".", 1)[0] if lm_name.endswith(".gguf") else lm_name
    world_stem = RunFiles(Path(world_file)).stem
    return out_dir / f"bridge_{lm_stem}_{world_stem}.safetensors"


def train_bridge(cfg: BridgeTrainConfig) -> Path:
    cfg.validate()  # the CLI has done so already, before importing torch; a library caller gets it here
    configure_threads()
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    precision = choose_precision(cfg.train.precision, device)
    # The LM's and the projector's forwards (and so their backward) run in the chosen precision; the projector's
    # weights and AdamW stay fp32, the NLL is computed in fp32, and stage 1 (alignment, no LM) and the world
    # model's latents (computed once, small) stay fp32.
    scope = "; autocast covers the LM and the projector, not alignment" if precision.precision == "bf16" else ""
    print(precision.describe() + scope, flush=True)
    model = WorldInference.load(cfg.world_model, device)
    checkpoint = model.checkpoint
    data_path = resolve_data(cfg.data, cfg.data_dir, RunKind.WORLD)
    pairs, stats = read_pairs(data_path, checkpoint)
    train_pairs = split_pairs(pairs, checkpoint, "train")
    print(f"{data_path}: {stats.summary()}; {len(train_pairs)} in the world model's training split")
    if len(train_pairs) < cfg.train.batch + cfg.val_pairs:
        raise TextJepaError(
            f"only {len(train_pairs)} training pairs; need at least --batch + --val-pairs "
            f"({cfg.train.batch} + {cfg.val_pairs})"
        )
    out_path = Path(cfg.out) if cfg.out else None
    ensure_writable_dir(out_path.parent if out_path else Path(cfg.train.out_dir))

    source = resolve_decoder_model(cfg.decoder_model)
    out_path = out_path or default_bridge_path(Path(cfg.train.out_dir), source.name, checkpoint.path.name)
    if out_path.exists() and not cfg.train.overwrite:
        # A run never silently replaces another; checked before the decoder model is loaded.
        raise TextJepaError(f"{out_path} already exists; replace it with --overwrite, or choose another --out")
    started = time.time()
    lm = load_causal_lm(source, device)
    print(f"decoder model: {source} ({lm.hidden_size} hidden, vocab {lm.vocab_size}; {time.time() - started:.0f}s)")
    if cfg.prefix_tokens + cfg.max_prompt_tokens + cfg.max_reply_tokens > lm.context_length:
        raise TextJepaError(
            f"--prefix-tokens + --max-prompt-tokens + --max-reply-tokens exceed the decoder context "
            f"({lm.context_length})"
        )

    rng = np.random.default_rng(cfg.train.seed)
    order = rng.permutation(len(train_pairs))
    val_pairs = [train_pairs[i] for i in order[: cfg.val_pairs]]
    fit_pairs = [train_pairs[i] for i in order[cfg.val_pairs :]]
    fit = lm_examples(lm, fit_pairs, cfg.max_prompt_tokens, cfg.max_reply_tokens)
    val = lm_examples(lm, val_pairs, cfg.max_prompt_tokens, cfg.max_reply_tokens) if val_pairs else []
    by_record = {p.record: p for p in pairs}
    fit_latents = conditioning_latents(model, [by_record[e.record] for e in fit], cfg.oracle)
    target_latents = None
    if cfg.target_mix > 0 and not cfg.oracle:
        target_latents = conditioning_latents(model, [by_record[e.record] for e in fit], oracle=True).to(device)
    empty_prompt, _ = truncate_left(lm.prompt_ids(context_messages("")), cfg.max_prompt_tokens)
    val_latents = None
    if val:
        val_latents = conditioning_latents(model, [by_record[e.record] for e in val], cfg.oracle)

    torch.manual_seed(cfg.train.seed)
    embed_scale = float(lm.model.get_input_embeddings().weight.detach().float().std())
    projector = PrefixProjector(
        checkpoint.config.predicted_dim, lm.hidden_size, cfg.prefix_tokens, embed_scale=embed_scale
    )
    projector.to(device)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    # The training stages' schedule, with the cosine decay to 0.1 x lr starting right after the warmup.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, cfg.train.steps, cfg.train.warmup_fraction, None, 0.1)
    )
    bridge = Bridge(projector, lm.fingerprint(), world_identity(checkpoint))
    # Like a training stage's checkpoint (train/loop.py describe_run): every setting of the run, as given.
    bridge.info = {
        "train": {
            **dataclasses.asdict(cfg),
            "data": str(data_path),
            "latent": "oracle (teacher latent of the true reply)" if cfg.oracle else "predicted",
            "train_pairs": len(fit),
            "val_pairs": len(val),
        },
        "world_model": str(checkpoint.path),
        **precision.info(),
    }
    metrics_log = MetricsLog.beside(out_path)
    metrics_log.start()
    shuffle = derangement(len(val), cfg.train.seed) if len(val) >= 2 else None
    best = math.inf
    fit_latents, val_latents = fit_latents.to(device), (val_latents.to(device) if val_latents is not None else None)

    def evaluate(step: int) -> dict:
        projector.eval()
        compute = precision.precision
        matched = mean_nll(lm, projector, val, val_latents, cfg.train.batch, compute)
        shuffled = (
            mean_nll(lm, projector, val, val_latents[shuffle], cfg.train.batch, compute)
            if shuffle is not None
            else math.nan
        )
        projector.train()
        return {"step": step, "val_matched_nll": matched, "val_shuffled_nll": shuffled}

    def save(record: dict) -> None:
        bridge.info["best"] = record
        save_bridge(out_path, bridge)

    if cfg.align_steps:
        started = time.time()
        skip = set(lm.stop_ids) | {int(i) for i in getattr(lm.tokenizer, "all_special_ids", [])}
        weight = lm.model.get_input_embeddings().weight
        replies = [e.reply_ids for e in fit]
        for record in align_projector(
            projector,
            fit_latents,
            replies,
            weight,
            skip,
            cfg.align_steps,
            cfg.align_batch,
            cfg.align_lr,
            cfg.train.seed,
        ):
            metrics_log.append(record)
        print(
            f"alignment: {cfg.align_steps} steps, slot loss {record['align_slot_loss']:.3f}, "
            f"prefix length {record['prefix_norm']:.2f} ({time.time() - started:.0f}s)",
            flush=True,
        )
    if val:
        record = evaluate(0)
        metrics_log.append(record)
        best = record["val_matched_nll"]
        save(record)
        print(f"step 0 val matched {best:.4f} shuffled {record['val_shuffled_nll']:.4f}", flush=True)
    elif not cfg.train.steps:
        save({"step": 0})

    started = time.time()
    window: list[float] = []
    projector.train()
    for step in range(cfg.train.steps):
        index = rng.integers(0, len(fit), size=cfg.train.batch)
        rows = [fit[i] for i in index]
        index_t = torch.from_numpy(index).to(device)
        inputs = fit_latents[index_t]
        if target_latents is not None:
            use_target = torch.from_numpy(rng.random(cfg.train.batch) < cfg.target_mix).to(device)
            inputs = torch.where(use_target[:, None], target_latents[index_t], inputs)
        drop = rng.random(cfg.train.batch) < cfg.prompt_dropout
        prompts = [empty_prompt if dropped else r.prompt_ids for r, dropped in zip(rows, drop)]
        with autocast(device, precision.precision):
            sums, counts = reply_nll(lm, projector(inputs), prompts, [r.reply_ids for r in rows])
        loss = sums.sum() / counts.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(projector.parameters(), cfg.train.grad_clip))
        optimizer.step()
        window.append(loss.item())
        record = {"step": step + 1, "loss": window[-1], "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0]}
        scheduler.step()
        last = step + 1 == cfg.train.steps
        if val and ((step + 1) % cfg.train.eval_every == 0 or last):
            record.update(evaluate(step + 1))
            if record["val_matched_nll"] < best:
                best = record["val_matched_nll"]
                save(record)
        elif not val and last:
            save(record)
        metrics_log.append(record)
        # Every validation prints its line even without progress output: a log shows the run alive and learning.
        if (cfg.train.progress and ((step + 1) % 10 == 0 or last)) or "val_matched_nll" in record:
            elapsed = time.time() - started
            rate = elapsed / (step + 1)
            extra = ""
            if "val_matched_nll" in record:
                extra = f" val matched {record['val_matched_nll']:.4f} shuffled {record['val_shuffled_nll']:.4f}"
            eta = format_duration(rate * (cfg.train.steps - step - 1))
            print(
                f"step {step + 1}/{cfg.train.steps} loss {np.mean(window):.4f} ({rate:.2f}s/step){extra}, "
                f"elapsed {format_duration(elapsed)}, eta {eta}",
                flush=True,
            )
            window = []
    print(f"bridge: {out_path} (best val matched NLL {bridge.info['best'].get('val_matched_nll', math.nan):.4f})")
    return out_path
