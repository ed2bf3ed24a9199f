"""Issue 22's levers: a next-turn world model standing on all-MiniLM-L6-v2, measured on bench/quality.py's sets.

    python bench/experiments/backbone_levers.py --sets stdlib jargon chat --seeds 0 --levers linear mlp [--json PATH]
    python bench/experiments/backbone_levers.py --list      # the levers

Same pair sets, split and held-out batches of 256 candidates as bench/quality.py (its `held_out_batches`,
`mean_ranking`), so every number here sits beside its TF-IDF, BM25, MiniLM zero-shot and minilm-ft rows.

Frozen mode: MiniLM's latents of every context and next turn are computed once per set and cached on disk
(bench/.cache/backbone/<set>.pt: the pooled, normalised latents, and each context's token states at the input of
MiniLM's last two layers and at its output). The encoding's CPU seconds are reported beside, outside the training
budget, as the zero-shot row's encoding is. Only a predictor trains, on those tensors.

Every lever trains on the training split minus a validation tenth (the file's last tenth: the files are in key
order, so it is nearly key-disjoint) and is early-stopped on R@1 over validation batches of 256; the test split is
read only by the final evaluation. A lever stops at its step count or at its CPU budget, whichever comes first.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

# An experiment, not a ratio bench (bench/run_all.py runs only bench/*.py): it reads the benches' helpers beside it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import CACHE_DIR, exit_code  # noqa: E402
from _pairsets import SET_NAMES, build_set, read_pairs  # noqa: E402
from quality import finetune_minilm, held_out_batches, load_minilm, mean_ranking, write_report  # noqa: E402
from torch import nn  # noqa: E402

CANDIDATES = 256
VAL_FRACTION = 0.1
CONTEXT_LAYERS = (4, 5, 6)  # hidden_states indices kept per context token: inputs of layers 5 and 6, the output
DIM = 384


# ---------------------------------------------------------------- the cached latents


@dataclass
class Split:
    texts: list[tuple[str, str]]
    ctx: torch.Tensor  # (N, 384) pooled normalised MiniLM latents of the contexts
    rep: torch.Tensor  # (N, 384) of the next turns
    reply_ids: torch.Tensor  # (N,) the same id for the same reply text (in-batch duplicates are not negatives)
    tokens: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # layer -> per context (L_i, 384) fp16
    input_ids: list[torch.Tensor] = field(default_factory=list)  # per context, MiniLM's WordPiece ids

    def subset(self, index: list[int]) -> Split:
        pick = torch.tensor(index)
        return Split(
            [self.texts[i] for i in index],
            self.ctx[pick],
            self.rep[pick],
            self.reply_ids[pick],
            {layer: [states[i] for i in index] for layer, states in self.tokens.items()},
            [self.input_ids[i] for i in index],
        )


def encode_texts(model, texts: list[str], keep_tokens: bool) -> tuple[torch.Tensor, dict, list]:
    """Pooled normalised latents (sentence-transformers' mean pooling) and, if asked, per-text token states."""
    bert = model[0].auto_model
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # length-sorted batches: little padding
    pooled = torch.zeros(len(texts), DIM)
    tokens: dict[int, list] = {layer: [None] * len(texts) for layer in CONTEXT_LAYERS} if keep_tokens else {}
    ids: list = [None] * len(texts) if keep_tokens else []
    with torch.no_grad():
        for start in range(0, len(order), 64):
            chunk = order[start : start + 64]
            features = model.tokenize([texts[i] for i in chunk])
            out = bert(
                input_ids=features["input_ids"],
                attention_mask=features["attention_mask"],
                token_type_ids=features.get("token_type_ids"),
                output_hidden_states=keep_tokens,
            )
            last = out.last_hidden_state
            mask = features["attention_mask"].unsqueeze(-1).float()
            mean = (last * mask).sum(1) / mask.sum(1).clamp(min=1)
            pooled[chunk] = F.normalize(mean, dim=-1)
            if keep_tokens:
                lengths = features["attention_mask"].sum(1).tolist()
                for row, i in enumerate(chunk):
                    for layer in CONTEXT_LAYERS:
                        tokens[layer][i] = out.hidden_states[layer][row, : lengths[row]].to(torch.float16).clone()
                    ids[i] = features["input_ids"][row, : lengths[row]].clone()
    return pooled, tokens, ids


def reply_index(pairs: list[tuple[str, str]]) -> torch.Tensor:
    seen: dict[str, int] = {}
    return torch.tensor([seen.setdefault(r, len(seen)) for _, r in pairs])


def load_set(name: str, cache_root: Path) -> tuple[Split, Split, dict]:
    """(train, test) with MiniLM latents, encoded once per set and cached; the encoding's CPU seconds."""
    files = build_set(name, CACHE_DIR / "quality")
    train_pairs, test_pairs = read_pairs(files.train), read_pairs(files.test)
    path = cache_root / f"{name}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=False)
    else:
        model = load_minilm()
        began = time.process_time()
        saved = {"cost": {}}
        for split, pairs in (("train", train_pairs), ("test", test_pairs)):
            t0 = time.process_time()
            ctx, tokens, ids = encode_texts(model, [c for c, _ in pairs], keep_tokens=True)
            t1 = time.process_time()
            rep, _, _ = encode_texts(model, [r for _, r in pairs], keep_tokens=False)
            saved[split] = {"ctx": ctx, "rep": rep, "tokens": tokens, "ids": ids}
            saved["cost"][f"{split}_context_cpu_s"] = round(t1 - t0, 1)
            saved["cost"][f"{split}_reply_cpu_s"] = round(time.process_time() - t1, 1)
        saved["cost"]["total_cpu_s"] = round(time.process_time() - began, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(saved, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)  # complete or absent
    splits = []
    for split, pairs in (("train", train_pairs), ("test", test_pairs)):
        part = saved[split]
        splits.append(Split(pairs, part["ctx"], part["rep"], reply_index(pairs), part["tokens"], part["ids"]))
    return splits[0], splits[1], saved["cost"]


def carve_validation(train: Split) -> tuple[Split, Split]:
    cut = int(len(train.texts) * (1 - VAL_FRACTION))
    return train.subset(list(range(cut))), train.subset(list(range(cut, len(train.texts))))


# ---------------------------------------------------------------- predictors


def pad(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) float32 and the (B, L) mask of a list of (L_i, D) token states."""
    longest = max(s.shape[0] for s in states)
    out = torch.zeros(len(states), longest, states[0].shape[-1])
    mask = torch.zeros(len(states), longest)
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s.float()
        mask[i, : s.shape[0]] = 1
    return out, mask


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


class Residual(nn.Module):
    """x + W x (W starts at zero: the predictor starts as "copy the context"), or x + MLP(x)."""

    def __init__(self, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        if hidden:
            self.body = nn.Sequential(nn.Linear(DIM, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, DIM))
        else:
            self.body = nn.Sequential(nn.Dropout(dropout), nn.Linear(DIM, DIM))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PooledPredictor(nn.Module):
    """Reads the pooled context latent only."""

    needs = ()

    def __init__(self, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        self.head = Residual(hidden, dropout)

    def forward(self, batch: Split, index: list[int]) -> torch.Tensor:
        return self.head(batch.ctx[index])


class AttentionPoolPredictor(nn.Module):
    """The pooled latent plus a learned attention pooling over the context's output token states (zero-init)."""

    needs = (6,)

    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(DIM, 4)  # 4 pooling heads
        self.mix = nn.Linear(4 * DIM, DIM)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)
        self.head = Residual()

    def forward(self, batch: Split, index: list[int]) -> torch.Tensor:
        states, mask = pad([batch.tokens[6][i] for i in index])
        weights = self.score(states).masked_fill(mask.unsqueeze(-1) == 0, -1e9).softmax(1)  # (B, L, 4)
        pooled = torch.einsum("blh,bld->bhd", weights, states).flatten(1)
        return self.head(batch.ctx[index] + self.mix(pooled))


class TokenLayerPredictor(nn.Module):
    """A fresh pre-norm transformer layer over the context's output token states (identity at init: its output
    projections start at zero), mean-pooled, then the residual linear transition."""

    needs = (6,)

    def __init__(self, heads: int = 6, dropout: float = 0.1) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            DIM, heads, 4 * DIM, dropout=dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        for module in (self.layer.self_attn.out_proj, self.layer.linear2):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        self.head = Residual()

    def forward(self, batch: Split, index: list[int]) -> torch.Tensor:
        states, mask = pad([batch.tokens[6][i] for i in index])
        out = self.layer(states, src_key_padding_mask=mask == 0)
        return self.head(F.normalize(masked_mean(out, mask), dim=-1))


class TopLayersPredictor(nn.Module):
    """MiniLM's own top `k` layers (pretrained weights, trainable) over the cached token states at their input,
    MiniLM's mean pooling, then the residual linear transition: starts exactly at zero-shot MiniLM."""

    def __init__(self, minilm, k: int) -> None:
        super().__init__()
        bert = minilm[0].auto_model
        self.layers = nn.ModuleList(copy.deepcopy(bert.encoder.layer[6 - k :]))
        self.k = k
        self.needs = (6 - k,)
        self.head = Residual()

    def forward(self, batch: Split, index: list[int]) -> torch.Tensor:
        states, mask = pad([batch.tokens[6 - self.k][i] for i in index])
        additive = (1.0 - mask)[:, None, None, :] * -1e4
        for layer in self.layers:
            out = layer(states, attention_mask=additive)
            states = out[0] if isinstance(out, tuple) else out
        return self.head(F.normalize(masked_mean(states, mask), dim=-1))


class FullContextTower(nn.Module):
    """All of MiniLM on the context side, fine-tuned (the reply side stays the frozen cached latents)."""

    needs = ()

    def __init__(self, minilm) -> None:
        super().__init__()
        self.bert = copy.deepcopy(minilm[0].auto_model)
        self.head = Residual()

    def forward(self, batch: Split, index: list[int]) -> torch.Tensor:
        ids = [batch.input_ids[i] for i in index]
        longest = max(len(t) for t in ids)
        input_ids = torch.zeros(len(ids), longest, dtype=torch.long)
        mask = torch.zeros(len(ids), longest, dtype=torch.long)
        for i, t in enumerate(ids):
            input_ids[i, : len(t)] = t
            mask[i, : len(t)] = 1
        out = self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return self.head(F.normalize(masked_mean(out, mask.float()), dim=-1))


# ---------------------------------------------------------------- training


@dataclass
class Lever:
    name: str
    predictor: str = "linear"  # linear | mlp | attnpool | tokenlayer | top1 | top2 | fullctx
    hidden: int = 1024
    dropout: float = 0.0
    reply_head: bool = False  # a learned residual linear map of the reply latents too (two towers)
    symmetric: bool = False
    temperature: float = 0.05
    learn_temperature: bool = False
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch: int = 256
    steps: int = 3000
    eval_every: int = 100
    patience: int = 8  # evaluations without a better validation R@1 before stopping
    hard_negatives: float = 0.0  # share of a batch drawn as neighbours (by MiniLM reply latent) of the rest
    align: float = 0.0  # weight of a JEPA-style alignment term (1 - cosine to the target) beside InfoNCE
    note: str = ""


LEVERS = {
    lever.name: lever
    for lever in [
        Lever("linear", note="residual linear x+Wx, InfoNCE T=0.05, batch 256, AdamW 1e-3"),
        Lever("linear-t02", temperature=0.02),
        Lever("linear-t10", temperature=0.1),
        Lever("linear-learnT", learn_temperature=True),
        Lever("linear-sym", symmetric=True),
        Lever("linear-wd1", weight_decay=1.0),
        Lever("linear-drop", dropout=0.2),
        Lever("linear-lr3e-3", lr=3e-3),
        Lever("linear-hard", hard_negatives=0.5),
        Lever("linear-align", align=1.0),
        Lever("twotower", reply_head=True),
        Lever("twotower-sym", reply_head=True, symmetric=True),
        Lever("mlp", predictor="mlp"),
        Lever("mlp-drop", predictor="mlp", dropout=0.3, weight_decay=0.1),
        Lever("attnpool", predictor="attnpool"),
        Lever("tokenlayer", predictor="tokenlayer"),
        Lever("top1", predictor="top1", lr=1e-4, note="MiniLM's last layer trainable on cached layer-5 states"),
        Lever("top1-lr3e-5", predictor="top1", lr=3e-5),
        Lever("top2", predictor="top2", lr=1e-4),
        Lever("top1-twotower", predictor="top1", lr=1e-4, reply_head=True),
        Lever("fullctx", predictor="fullctx", lr=3e-5, batch=64, eval_every=25),
    ]
}


def build_predictor(lever: Lever, minilm_getter) -> nn.Module:
    kind = lever.predictor
    if kind == "linear":
        return PooledPredictor(0, lever.dropout)
    if kind == "mlp":
        return PooledPredictor(lever.hidden, lever.dropout)
    if kind == "attnpool":
        return AttentionPoolPredictor()
    if kind == "tokenlayer":
        return TokenLayerPredictor()
    if kind in ("top1", "top2"):
        return TopLayersPredictor(minilm_getter(), int(kind[-1]))
    if kind == "fullctx":
        return FullContextTower(minilm_getter())
    raise ValueError(kind)


class WorldModel(nn.Module):
    def __init__(self, lever: Lever, minilm_getter) -> None:
        super().__init__()
        self.predictor = build_predictor(lever, minilm_getter)
        self.reply_head = Residual() if lever.reply_head else None
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / lever.temperature)), lever.learn_temperature)

    def predict(self, split: Split, index: list[int]) -> torch.Tensor:
        return F.normalize(self.predictor(split, index), dim=-1)

    def target(self, split: Split, index: list[int]) -> torch.Tensor:
        rep = split.rep[index]
        return F.normalize(self.reply_head(rep), dim=-1) if self.reply_head is not None else rep


def info_nce(pred: torch.Tensor, target: torch.Tensor, reply_ids: torch.Tensor, scale: torch.Tensor, sym: bool):
    logits = scale * pred @ target.T
    duplicate = (reply_ids[:, None] == reply_ids[None, :]) & ~torch.eye(len(reply_ids), dtype=torch.bool)
    logits = logits.masked_fill(duplicate, -1e4)  # the same reply text elsewhere in the batch is no negative
    labels = torch.arange(len(pred))
    loss = F.cross_entropy(logits, labels)
    return (loss + F.cross_entropy(logits.T, labels)) / 2 if sym else loss


def evaluate(model: WorldModel, split: Split, chunk: int = 256) -> dict:
    """R@1/R@5/MRR over consecutive batches of 256 (bench/quality.py's held_out_batches and mean_ranking)."""
    model.eval()
    with torch.no_grad():
        preds, targets = [], []
        for start in range(0, len(split.texts), chunk):
            index = list(range(start, min(start + chunk, len(split.texts))))
            preds.append(model.predict(split, index))
            targets.append(model.target(split, index))
        pred, target = torch.cat(preds).numpy(), torch.cat(targets).numpy()
    model.train()
    # Consecutive batches in file order, the last partial one dropped (bench/quality.py's held_out_batches),
    # scored by position: a validation tenth may repeat a text, the test split never does.
    size = min(CANDIDATES, len(split.texts))
    batches = held_out_batches([(i, i) for i in range(len(split.texts))], size)
    return mean_ranking(batches, lambda cs, rs: pred[cs] @ target[rs].T)


def sample_batch(rng: random.Random, order: list[int], size: int, train: Split, hard: float, neighbours) -> list:
    rows: list[int] = []
    replies: set[int] = set()

    def take(i: int) -> None:
        if int(train.reply_ids[i]) not in replies and i not in rows:
            replies.add(int(train.reply_ids[i]))
            rows.append(i)

    seeds = size - int(size * hard)
    while len(rows) < seeds:
        if not order:
            order.extend(range(len(train.texts)))
            rng.shuffle(order)
        take(order.pop())
    if hard:
        for i in list(rows):
            for j in neighbours[i].tolist():
                if len(rows) >= size:
                    break
                take(j)
                if j in rows:
                    break
    return rows


def train_lever(lever: Lever, train: Split, val: Split, seed: int, cpu_budget: float, minilm_getter) -> tuple:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = WorldModel(lever, minilm_getter)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lever.lr, weight_decay=lever.weight_decay)
    neighbours = None
    if lever.hard_negatives:
        sims = train.rep @ train.rep.T
        sims.fill_diagonal_(-2)
        neighbours = sims.topk(8, dim=1).indices
    best = {"val_R@1": evaluate(model, val)["R@1"], "step": 0}
    best_state = copy.deepcopy(model.state_dict())
    order: list[int] = []
    waited, step, began = 0, 0, time.process_time()
    train_cpu = 0.0
    curve = [(0, round(best["val_R@1"], 4))]
    while step < lever.steps and train_cpu < cpu_budget:
        t0 = time.process_time()
        index = sample_batch(rng, order, min(lever.batch, len(train.texts)), train, lever.hard_negatives, neighbours)
        pred = model.predict(train, index)
        target = model.target(train, index)
        loss = info_nce(pred, target, train.reply_ids[index], model.log_scale.exp(), lever.symmetric)
        if lever.align:
            loss = loss + lever.align * (1 - (pred * target.detach()).sum(-1)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        train_cpu += time.process_time() - t0
        if step % lever.eval_every == 0 or step == lever.steps:
            score = evaluate(model, val)["R@1"]
            curve.append((step, round(score, 4)))
            if score > best["val_R@1"]:
                best, waited = {"val_R@1": score, "step": step}, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                waited += 1
                if waited >= lever.patience:
                    break
    model.load_state_dict(best_state)
    cost = {
        "steps_run": step,
        "best_step": best["step"],
        "val_R@1": round(best["val_R@1"], 4),
        "train_cpu_s": round(train_cpu, 1),
        "total_cpu_s_with_validation": round(time.process_time() - began, 1),
        "steps_per_cpu_s": round(step / max(train_cpu, 1e-9), 1),
        "curve": curve,
    }
    return model, cost


# ---------------------------------------------------------------- fine-tuned mode


@dataclass
class FineTune:
    """MiniLM fine-tuned within the CPU budget (the minilm-ft row's 180 CPU-s), context side with or without the
    transition head; the reply side the same tower (MNRL-like, gradients through both) or the frozen cached
    zero-shot latents. Optionally a frozen residual linear transition is fitted afterwards on the fine-tuned
    model's latents of the training split (re-encoded: its CPU seconds are reported)."""

    name: str
    head: bool = True
    reply_side: str = "shared"  # shared | frozen
    batch: int = 32
    lr: float = 2e-5
    head_lr: float = 1e-3
    max_len: int = 256  # WordPiece tokens per text while training (evaluation always reads 256)
    temperature: float = 0.05  # MNRL's scale 20
    then_linear: bool = False
    note: str = ""


FINETUNES = {
    ft.name: ft
    for ft in [
        FineTune("ft-mnrl", head=False, note="minilm-ft's recipe in this harness (train minus validation tenth)"),
        FineTune("ft-world", note="MNRL-like + residual linear transition head on the context side"),
        FineTune("ft-world-len64", max_len=64),
        FineTune("ft-world-lr5e-5", lr=5e-5),
        FineTune("ft-world-lr1e-4", lr=1e-4),
        FineTune("ft-world-len128", max_len=128),
        FineTune("ft-ctx-frozenreply", reply_side="frozen", batch=64, lr=3e-5),
        FineTune("ft-mnrl-then-linear", head=False, then_linear=True),
        FineTune("ft-world-then-linear", then_linear=True),
        FineTune("ft-world-len128-then-linear", max_len=128, then_linear=True),
    ]
}


def pooled_latents(bert, features) -> torch.Tensor:
    out = bert(
        input_ids=features["input_ids"],
        attention_mask=features["attention_mask"],
        token_type_ids=features.get("token_type_ids"),
    ).last_hidden_state
    return F.normalize(masked_mean(out, features["attention_mask"].float()), dim=-1)


def encode_with(model, bert, texts: list[str], max_len: int = 256) -> torch.Tensor:
    model.max_seq_length = max_len
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), DIM)
    with torch.no_grad():
        for start in range(0, len(order), 64):
            chunk = order[start : start + 64]
            out[chunk] = pooled_latents(bert, model.tokenize([texts[i] for i in chunk]))
    return out


def run_minilm_ft(train: Split, test: Split, seed: int, cpu_budget: float) -> tuple:
    """bench/quality.py's minilm-ft row itself (its finetune_minilm on the whole training split), rerun here so
    that it gets the same CPU seconds on the machine as it is now."""
    model, cost = finetune_minilm(train.texts, seed, cpu_budget)
    bert = model[0].auto_model
    latents = Split(test.texts, encode_with(model, bert, [c for c, _ in test.texts]), None, test.reply_ids)
    latents.rep = encode_with(model, bert, [r for _, r in test.texts])
    return {"finetuned": evaluate(WorldModel(Lever("copy"), None), latents)}, {
        "steps_run": cost["steps"],
        "train_cpu_s": cost["cpu_seconds"],
        "steps_per_cpu_s": round(cost["steps"] / cost["cpu_seconds"], 3),
    }


def run_finetune(ft: FineTune, train: Split, val: Split, test: Split, seed: int, cpu_budget: float) -> tuple:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = load_minilm()
    bert = model[0].auto_model
    head = Residual()
    groups = [{"params": bert.parameters(), "lr": ft.lr}]
    if ft.head:
        groups.append({"params": head.parameters(), "lr": ft.head_lr})
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
    scale = 1 / ft.temperature
    bert.train()
    order: list[int] = []
    steps, began = 0, time.process_time()
    while time.process_time() - began < cpu_budget:
        index = sample_batch(rng, order, ft.batch, train, 0.0, None)
        model.max_seq_length = ft.max_len
        ctx = pooled_latents(bert, model.tokenize([train.texts[i][0] for i in index]))
        if ft.head:
            ctx = F.normalize(head(ctx), dim=-1)
        if ft.reply_side == "shared":
            rep = pooled_latents(bert, model.tokenize([train.texts[i][1] for i in index]))
        else:
            rep = train.rep[index]
        loss = info_nce(ctx, rep, train.reply_ids[index], torch.tensor(scale), False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bert.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
    train_cpu = time.process_time() - began
    bert.eval()
    head.eval()
    cost = {"steps_run": steps, "train_cpu_s": round(train_cpu, 1), "steps_per_cpu_s": round(steps / train_cpu, 3)}

    def latents(split: Split) -> Split:
        ctx = encode_with(model, bert, [c for c, _ in split.texts])
        with torch.no_grad():
            ctx = F.normalize(head(ctx), dim=-1) if ft.head else ctx
        rep = encode_with(model, bert, [r for _, r in split.texts]) if ft.reply_side == "shared" else split.rep
        return Split(split.texts, ctx, rep, split.reply_ids)

    t0 = time.process_time()
    test_latents = latents(test)
    cost["test_encode_cpu_s"] = round(time.process_time() - t0, 1)
    copy_model = WorldModel(Lever("copy"), None)
    result = {"finetuned": evaluate(copy_model, test_latents)}
    if ft.then_linear:
        t0 = time.process_time()
        train_latents, val_latents = latents(train), latents(val)
        cost["train_val_reencode_cpu_s"] = round(time.process_time() - t0, 1)
        linear, linear_cost = train_lever(LEVERS["linear"], train_latents, val_latents, seed, 60.0, None)
        cost["then_linear"] = linear_cost
        result["then_linear"] = evaluate(linear, test_latents)
    return result, cost


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    json_path = Path(args.json)
    report = json.loads(json_path.read_text()) if json_path.is_file() else {"sets": {}}
    minilm_cache: list = []

    def minilm_getter():
        if not minilm_cache:
            minilm_cache.append(load_minilm())
        return minilm_cache[0]

    for name in args.sets:
        train_full, test, encode_cost = load_set(name, Path(args.cache_dir))
        train, val = carve_validation(train_full)
        entry = report["sets"].setdefault(name, {"levers": {}})
        entry["encode_cost"] = encode_cost
        entry["sizes"] = {"train": len(train.texts), "val": len(val.texts), "test": len(test.texts)}
        copy_row = evaluate(WorldModel(Lever("copy"), minilm_getter), test)
        entry["copy"] = copy_row
        print(f"{name}: copy (MiniLM zero-shot) R@1={copy_row['R@1']:.3f}  encode {encode_cost}", flush=True)
        for ft_name in args.finetunes:
            for seed in args.seeds:
                if str(seed) in entry["levers"].get(ft_name, {}) and not args.redo:
                    continue
                if ft_name == "minilm-ft":
                    result, cost = run_minilm_ft(train_full, test, seed, args.cpu_budget)
                else:
                    result, cost = run_finetune(FINETUNES[ft_name], train, val, test, seed, args.cpu_budget)
                entry["levers"].setdefault(ft_name, {})[str(seed)] = {**result["finetuned"], **cost}
                if "then_linear" in result:
                    entry["levers"].setdefault(ft_name + "+linear", {})[str(seed)] = result["then_linear"]
                write_report(json_path, report)
                shown = "  ".join(
                    f"{k}: R@1={v['R@1']:.3f} R@5={v['R@5']:.3f} MRR={v['MRR']:.3f}" for k, v in result.items()
                )
                print(f"{name:7s} {ft_name:16s} seed={seed} {shown} | {cost}", flush=True)
        for lever_name in args.levers:
            lever = LEVERS[lever_name]
            for seed in args.seeds:
                key = str(seed)
                if key in entry["levers"].get(lever_name, {}) and not args.redo:
                    continue
                model, cost = train_lever(lever, train, val, seed, args.cpu_budget, minilm_getter)
                metrics = evaluate(model, test)
                entry["levers"].setdefault(lever_name, {})[key] = {**metrics, **cost}
                write_report(json_path, report)
                print(
                    f"{name:7s} {lever_name:16s} seed={seed} R@1={metrics['R@1']:.3f} "
                    f"(copy {copy_row['R@1']:.3f}, {metrics['R@1'] - copy_row['R@1']:+.3f}) R@5={metrics['R@5']:.3f} "
                    f"MRR={metrics['MRR']:.3f} | val {cost['val_R@1']:.3f} best step {cost['best_step']}/"
                    f"{cost['steps_run']}, {cost['train_cpu_s']} CPU s, {cost['steps_per_cpu_s']} steps/CPU s",
                    flush=True,
                )
    write_report(json_path, report)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SET_NAMES), choices=SET_NAMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--levers", nargs="+", default=[], choices=sorted(LEVERS), help="frozen-mode levers")
    parser.add_argument(
        "--finetunes", nargs="+", default=[], choices=["minilm-ft", *sorted(FINETUNES)], help="fine-tuned levers"
    )
    parser.add_argument("--cpu-budget", type=float, default=180.0, help="CPU seconds of training per lever")
    parser.add_argument("--cache-dir", default=str(CACHE_DIR / "backbone"))
    parser.add_argument("--json", default=str(CACHE_DIR / "backbone" / "levers.json"))
    parser.add_argument("--redo", action="store_true", help="run levers the report already holds again")
    parser.add_argument("--list", action="store_true", help="print the levers and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for lever in LEVERS.values():
            print(lever)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
