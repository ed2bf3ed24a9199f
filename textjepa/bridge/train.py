"""train-bridge: learn the prefix projector with the LLM and the world model frozen, as a stage of the shared
training loop (textjepa/train/loop.py).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from textjepa.bridge.align import align_projector
from textjepa.bridge.card import write_bridge_card
from textjepa.bridge.data import LMExample, conditioning_latents, derangement, lm_examples, read_pairs, split_pairs
from textjepa.bridge.scoring import reply_nll
from textjepa.config import BridgeTrainConfig, TrainConfig
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
from textjepa.io import RunFiles, RunKind, ensure_writable_dir, own_output_file
from textjepa.precision import autocast
from textjepa.runtime import choose_precision, configure_threads, resolve_device, seed_everything
from textjepa.settings import Settings
from textjepa.train.checkpointer import Checkpointer, MetricsLog
from textjepa.train.loop import Stage, run_training
from textjepa.train.schedules import warmup_cosine
from textjepa.train.tensorboard import tensorboard_log
from textjepa.train.validator import Validator


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


class BridgeLoss(nn.Module):
    """The LM's mean per-token NLL of the true replies after the projector's prefix (the LM stays frozen)."""

    def __init__(self, projector: PrefixProjector, lm: CausalLM) -> None:
        super().__init__()
        self.model = projector
        self.lm = lm  # a plain object, not a submodule: its weights are neither trained nor saved

    def forward(self, latents: torch.Tensor, prompts: list, replies: list) -> dict[str, torch.Tensor]:
        sums, counts = reply_nll(self.lm, self.model(latents), prompts, replies)
        return {"loss": sums.sum() / counts.sum()}


@dataclass
class BridgeBatch:
    index: np.ndarray  # rows of the training examples, drawn with replacement
    rows: list[LMExample]
    use_target: np.ndarray | None  # rows conditioned on the true reply's latent instead (--target-mix)
    drop_prompt: np.ndarray  # rows whose prompt is replaced by an empty user turn (--prompt-dropout)

    @property
    def real_tokens(self) -> int:
        return sum(len(row.prompt_ids) + len(row.reply_ids) for row in self.rows)


class BridgeSampler:
    """Batches drawn from one numpy generator, in the order train-bridge has always drawn them: the rows, then
    which of them take the target latent (only with --target-mix), then which lose their prompt."""

    def __init__(self, examples: list[LMExample], cfg: BridgeTrainConfig, rng: np.random.Generator, mix: bool) -> None:
        self.examples, self.cfg, self.rng, self.mix = examples, cfg, rng, mix

    def next_batch(self) -> BridgeBatch:
        size = self.cfg.train.batch
        index = self.rng.integers(0, len(self.examples), size=size)
        use_target = self.rng.random(size) < self.cfg.target_mix if self.mix else None
        drop = self.rng.random(size) < self.cfg.prompt_dropout
        return BridgeBatch(index, [self.examples[i] for i in index], use_target, drop)


@dataclass
class BridgeData:
    """The LM's view of the pairs (training and held-out examples) and the projector's inputs for them."""

    fit: list[LMExample]
    fit_latents: torch.Tensor
    target_latents: torch.Tensor | None  # the true replies' latents, for --target-mix
    val: list[LMExample]
    val_latents: torch.Tensor | None
    empty_prompt: list[int]


class BridgeStage(Stage):
    """The projector trained through the frozen LM: its own optimizer (AdamW over the projector, weight decay on
    every parameter) and schedule (cosine to 0.1 x lr right after the warmup), a validation before the first step
    (after the alignment stage, `begin`), a log record every step."""

    kind = "bridge"
    log_every = 1
    validate_first = True

    def __init__(
        self, cfg: BridgeTrainConfig, lm: CausalLM, projector: PrefixProjector, data: BridgeData, precision: str
    ) -> None:
        self.cfg, self.lm, self.data, self.precision = cfg, lm, data, precision
        self.model = projector
        self.loss = BridgeLoss(projector, lm)
        self.generators = {}
        self.device = data.fit_latents.device
        self.shuffle = derangement(len(data.val), cfg.train.seed) if len(data.val) >= 2 else None

    def build_optimizer(self, train: TrainConfig) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=train.lr, weight_decay=train.weight_decay)

    def schedule(self, train: TrainConfig) -> Callable[[int], float]:
        return lambda step: warmup_cosine(step, train.steps, train.warmup_fraction, None, 0.1)

    def begin(self, log: MetricsLog) -> None:
        """Stage 1 (bridge/align.py): the prefix put into the LM's token-embedding space, without the LM."""
        cfg, lm = self.cfg, self.lm
        if not cfg.align_steps:
            return
        started = time.time()
        skip = set(lm.stop_ids) | {int(i) for i in getattr(lm.tokenizer, "all_special_ids", [])}
        weight = lm.model.get_input_embeddings().weight
        replies = [e.reply_ids for e in self.data.fit]
        for record in align_projector(
            self.model,
            self.data.fit_latents,
            replies,
            weight,
            skip,
            cfg.align_steps,
            cfg.align_batch,
            cfg.align_lr,
            cfg.train.seed,
        ):
            log.append(record)
        print(
            f"alignment: {cfg.align_steps} steps, slot loss {record['align_slot_loss']:.3f}, "
            f"prefix length {record['prefix_norm']:.2f} ({time.time() - started:.0f}s)",
            flush=True,
        )

    def make_inputs(self, batch: BridgeBatch, step: int) -> dict:
        index = torch.from_numpy(batch.index).to(self.device)
        latents = self.data.fit_latents[index]
        if batch.use_target is not None:
            use_target = torch.from_numpy(batch.use_target).to(self.device)
            latents = torch.where(use_target[:, None], self.data.target_latents[index], latents)
        prompts = [self.data.empty_prompt if drop else r.prompt_ids for r, drop in zip(batch.rows, batch.drop_prompt)]
        return {"latents": latents, "prompts": prompts, "replies": [r.reply_ids for r in batch.rows]}

    def validation_metrics(self, examples: list[LMExample], generator: torch.Generator) -> dict[str, float]:
        """Over all held-out pairs at once (the loop's validation gets them as one batch): the NLL with each pair's
        own latent, and with another pair's (a fixed derangement)."""
        batch, latents, precision = self.cfg.train.batch, self.data.val_latents, self.precision
        matched = mean_nll(self.lm, self.model, examples, latents, batch, precision)
        shuffled = math.nan
        if self.shuffle is not None:
            shuffled = mean_nll(self.lm, self.model, examples, latents[self.shuffle], batch, precision)
        return {"val_matched_nll": matched, "val_shuffled_nll": shuffled}

    def score(self, metrics: dict[str, float]) -> float:
        return -metrics["val_matched_nll"]


class BridgeCheckpointer(Checkpointer):
    """The bridge file of the best step (its info records that step's metrics and the run's id), its card and the
    metrics log beside it; no training state (train-bridge does not resume)."""

    def __init__(self, out_path: Path, bridge: Bridge) -> None:
        super().__init__(out_path)
        self.bridge = bridge

    def write_best(self, step: int, val: dict[str, float]) -> None:
        best = {"step": step, **{k: v for k, v in val.items() if k != "score"}} if val else self.best_metrics
        self.bridge.info["best"] = best
        self.bridge.info["run_id"] = self.run_id
        save_bridge(self.best_path, self.bridge)
        write_bridge_card(self.best_path, self.bridge)

    def finish(self) -> None:
        self.log.close()
        best = self.bridge.info.get("best", {}).get("val_matched_nll", math.nan)
        print(f"bridge: {self.best_path} (best val matched NLL {best:.4f})")


def bridge_data(
    cfg: BridgeTrainConfig,
    model: WorldInference,
    lm: CausalLM,
    pairs: list,
    train_pairs: list,
    rng: np.random.Generator,
) -> BridgeData:
    """--val-pairs of the training pairs held out (the first of a permutation by `rng`), the rest to train on."""
    order = rng.permutation(len(train_pairs))
    val_pairs = [train_pairs[i] for i in order[: cfg.val_pairs]]
    fit_pairs = [train_pairs[i] for i in order[cfg.val_pairs :]]
    fit = lm_examples(lm, fit_pairs, cfg.max_prompt_tokens, cfg.max_reply_tokens)
    val = lm_examples(lm, val_pairs, cfg.max_prompt_tokens, cfg.max_reply_tokens) if val_pairs else []
    by_record = {p.record: p for p in pairs}
    fit_latents = conditioning_latents(model, [by_record[e.record] for e in fit], cfg.oracle)
    target_latents = None
    if cfg.target_mix > 0 and not cfg.oracle:
        target_latents = conditioning_latents(model, [by_record[e.record] for e in fit], oracle=True).to(lm.device)
    empty_prompt, _ = truncate_left(lm.prompt_ids(context_messages("")), cfg.max_prompt_tokens)
    val_latents = None
    if val:
        val_latents = conditioning_latents(model, [by_record[e.record] for e in val], cfg.oracle).to(lm.device)
    return BridgeData(fit, fit_latents.to(lm.device), target_latents, val, val_latents, empty_prompt)


def train_bridge(cfg: BridgeTrainConfig, settings: Settings | None = None) -> Path:
    """`textjepa train-bridge`. settings: the environment the command was started with (threads, the decoder model,
    hub downloads); none given, none set."""
    cfg.validate()  # the CLI has done so already, before importing torch; a library caller gets it here
    settings = settings or Settings()
    configure_threads(settings)
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
    data_path = resolve_data(cfg.data, cfg.data_dir, RunKind.WORLD, settings)
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

    source = resolve_decoder_model(cfg.decoder_model, settings=settings)
    out_path = out_path or default_bridge_path(Path(cfg.train.out_dir), source.name, checkpoint.path.name)
    with own_output_file(out_path):  # no second train-bridge writes it (or its metrics log) meanwhile
        if out_path.exists() and not cfg.train.overwrite:
            # A run never silently replaces another; checked before the decoder model is loaded.
            raise TextJepaError(f"{out_path} already exists; replace it with --overwrite, or choose another --out")
        started = time.time()
        lm = load_causal_lm(source, device, settings=settings)
        print(f"decoder model: {source} ({lm.hidden_size} hidden, vocab {lm.vocab_size}; {time.time() - started:.0f}s)")
        if cfg.prefix_tokens + cfg.max_prompt_tokens + cfg.max_reply_tokens > lm.context_length:
            raise TextJepaError(
                f"--prefix-tokens + --max-prompt-tokens + --max-reply-tokens exceed the decoder context "
                f"({lm.context_length})"
            )

        rng = np.random.default_rng(cfg.train.seed)  # the held-out pairs, then every training batch
        data = bridge_data(cfg, model, lm, pairs, train_pairs, rng)
        torch.manual_seed(cfg.train.seed)
        embed_scale = float(lm.model.get_input_embeddings().weight.detach().float().std())
        projector = PrefixProjector(
            checkpoint.config.predicted_dim, lm.hidden_size, cfg.prefix_tokens, embed_scale=embed_scale
        ).to(device)
        stage = BridgeStage(cfg, lm, projector, data, precision.precision)
        bridge = Bridge(projector, lm.fingerprint(), world_identity(checkpoint))
        # Like a training stage's checkpoint (train/session.py describe_run): every setting of the run, as given.
        bridge.info = {
            "train": {
                **dataclasses.asdict(cfg),
                "data": str(data_path),
                "latent": "oracle (teacher latent of the true reply)" if cfg.oracle else "predicted",
                "train_pairs": len(data.fit),
                "val_pairs": len(data.val),
            },
            "world_model": str(checkpoint.path),
            **precision.info(),
        }
        sampler = BridgeSampler(data.fit, cfg, rng, mix=data.target_latents is not None)
        validator = Validator(stage, lambda: [data.val], precision.precision) if data.val else None
        checkpointer = BridgeCheckpointer(out_path, bridge)
        checkpointer.log.mirror = tensorboard_log(cfg.train.tensorboard, "bridge")
        with checkpointer.disk_errors_say_what_is_kept():
            run_training(stage, sampler, validator, checkpointer, cfg.train, None, precision.precision)
    return out_path
