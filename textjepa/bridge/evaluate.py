"""eval-conditioning: does the world model's conditioning help the LLM predict the true reply?

On held-out pairs (the world model's validation split, see bridge/data.py), the mean per-token
NLL of the true reply under four conditions, computed in the same run on the same rows:
- matched:  the prefix from this pair's own predicted next latent;
- shuffled: the prefix from another held-out pair's prediction (a fixed derangement);
- zero:     the prefix from a zero latent (what --ablate-conditioning feeds the projector);
- none:     no prefix at all (the plain LM on the chat-templated prompt).
The headline is the relative gain of matched over shuffled, with a paired bootstrap interval.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from textjepa.agent import load_world
from textjepa.bridge.data import conditioning_latents, derangement, lm_examples, read_pairs, split_pairs
from textjepa.bridge.projector import check_prefix_tokens, load_bridge
from textjepa.bridge.scoring import reply_nll
from textjepa.config import ConditioningEvalConfig
from textjepa.data.sources import resolve_data
from textjepa.decoders.hf_model import load_causal_lm
from textjepa.decoders.models import resolve_decoder_model
from textjepa.errors import TextJepaError
from textjepa.eval.metrics import write_json_report
from textjepa.io import RunKind
from textjepa.precision import autocast
from textjepa.runtime import choose_precision, configure_threads, resolve_device

CONDITIONS = ("matched", "shuffled", "zero", "none")
BOOTSTRAP_SAMPLES = 1000


def relative_gain(matched: float, other: float) -> float:
    """How much lower matched NLL is than another condition's, as a fraction of the other's."""
    return (other - matched) / other if other else float("nan")


def bootstrap_gain(sums: dict[str, np.ndarray], counts: np.ndarray, seed: int) -> tuple[float, float]:
    """95% interval of the matched-over-shuffled gain, resampling pairs."""
    rng = np.random.default_rng(seed)
    n = len(counts)
    gains = []
    for _ in range(BOOTSTRAP_SAMPLES):
        pick = rng.integers(0, n, size=n)
        tokens = counts[pick].sum()
        gains.append(relative_gain(sums["matched"][pick].sum() / tokens, sums["shuffled"][pick].sum() / tokens))
    low, high = np.percentile(gains, [2.5, 97.5])
    return float(low), float(high)


def evaluate_conditioning(cfg: ConditioningEvalConfig) -> dict:
    for name in ("max_pairs", "batch", "max_reply_tokens", "max_prompt_tokens"):
        if getattr(cfg, name) < 1:
            raise TextJepaError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    configure_threads()
    device = resolve_device(cfg.device)
    precision = choose_precision(cfg.precision, device)
    # The LM's and the projector's forwards run in the chosen precision; the NLL is computed in fp32 and the world
    # model's latents (computed once, small) in fp32.
    scope = "; autocast covers the LM and the projector" if precision.precision == "bf16" else ""
    print(precision.describe() + scope, flush=True)
    checkpoint, world, teacher = load_world(Path(cfg.world_model), device)
    bridge = load_bridge(cfg.bridge)
    bridge.check_world(checkpoint)
    check_prefix_tokens(bridge.prefix_tokens)
    data_arg = cfg.data or checkpoint.data.source
    if not data_arg:
        raise TextJepaError("no DATA given and the world checkpoint does not record its training data")
    data_path = resolve_data(data_arg, cfg.data_dir, RunKind.WORLD)
    pairs, stats = read_pairs(data_path, checkpoint)
    held_out = split_pairs(pairs, checkpoint, "val")[: cfg.max_pairs]
    print(f"{data_path}: {stats.summary()}; evaluating {len(held_out)} held-out pairs (world model's val split)")
    if len(held_out) < 2:
        raise TextJepaError(
            f"{len(held_out)} held-out pairs in {data_path} under the world model's split; need at least 2"
        )
    source = resolve_decoder_model(cfg.decoder_model, bridge.decoder.path)
    lm = load_causal_lm(source, device)
    bridge.check_decoder(lm.fingerprint())
    projector = bridge.projector.to(device).eval()
    examples = lm_examples(lm, held_out, cfg.max_prompt_tokens, cfg.max_reply_tokens)
    by_record = {p.record: p for p in held_out}
    latents = conditioning_latents(
        checkpoint, world, teacher, [by_record[e.record] for e in examples], device, cfg.oracle
    )
    latents = latents.to(device)
    shuffled = latents[derangement(len(examples), cfg.seed).to(device)]
    sums = {name: np.zeros(len(examples)) for name in CONDITIONS}
    counts = np.zeros(len(examples))
    started = time.time()
    with torch.no_grad(), autocast(device, precision.precision):
        for start in range(0, len(examples), cfg.batch):
            rows = examples[start : start + cfg.batch]
            prompts, replies = [r.prompt_ids for r in rows], [r.reply_ids for r in rows]
            span = slice(start, start + len(rows))
            prefixes = {
                "matched": projector(latents[span]),
                "shuffled": projector(shuffled[span]),
                "zero": projector(torch.zeros_like(latents[span])),
                "none": None,
            }
            for name in CONDITIONS:
                row_sums, row_counts = reply_nll(lm, prefixes[name], prompts, replies)
                sums[name][span] = row_sums.cpu().numpy()
                counts[span] = row_counts.cpu().numpy()
            if cfg.progress:
                done = min(len(examples), start + cfg.batch)
                print(f"  {done}/{len(examples)} pairs ({time.time() - started:.0f}s)", flush=True)
    tokens = counts.sum()
    nll = {name: float(sums[name].sum() / tokens) for name in CONDITIONS}
    per_pair = {name: sums[name] / counts for name in CONDITIONS}
    low, high = bootstrap_gain(sums, counts, cfg.seed)
    report = {
        "world_model": str(checkpoint.path),
        "bridge": str(bridge.path),
        "decoder_model": str(source),
        "data": str(data_path),
        "split": "val",
        "split_rule": {k: checkpoint.data.to_info()[k] for k in ("val_fraction", "seed", "min_tokens")},
        "pairs": len(examples),
        "reply_tokens": int(tokens),
        "prefix_tokens": bridge.prefix_tokens,
        "latent": "oracle (teacher latent of the true reply)" if cfg.oracle else "predicted",
        "precision": precision.precision,
        "nll": nll,
        "gain_matched_vs_shuffled": relative_gain(nll["matched"], nll["shuffled"]),
        "gain_matched_vs_shuffled_ci95": [low, high],
        "gain_matched_vs_zero": relative_gain(nll["matched"], nll["zero"]),
        "gain_matched_vs_none": relative_gain(nll["matched"], nll["none"]),
        "matched_better_than_shuffled_fraction": float((per_pair["matched"] < per_pair["shuffled"]).mean()),
        "seconds": round(time.time() - started, 1),
    }
    print(format_report(report))
    if cfg.json_path:
        write_json_report(cfg.json_path, report)
    return report


def format_report(report: dict) -> str:
    lines = [f"reply NLL per token on {report['pairs']} held-out pairs ({report['reply_tokens']} tokens)"]
    if report["latent"] != "predicted":
        lines.append(f"DIAGNOSTIC: conditioning from the {report['latent']}, not from the world model")
    for name in CONDITIONS:
        lines.append(f"  {name:<9}{report['nll'][name]:10.4f}")
    low, high = report["gain_matched_vs_shuffled_ci95"]
    lines.append(
        f"gain matched vs shuffled: {100 * report['gain_matched_vs_shuffled']:+.2f}% "
        f"(95% CI {100 * low:+.2f}% .. {100 * high:+.2f}%; matched lower on "
        f"{100 * report['matched_better_than_shuffled_fraction']:.0f}% of pairs)"
    )
    lines.append(
        f"gain matched vs zero: {100 * report['gain_matched_vs_zero']:+.2f}%   "
        f"vs none: {100 * report['gain_matched_vs_none']:+.2f}%"
    )
    return "\n".join(lines)
