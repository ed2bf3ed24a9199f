"""eval-conditioning: does the world model's conditioning help the LLM predict the true reply?

On held-out pairs (the world model's validation split, see bridge/data.py), the mean per-token
NLL of the true reply under six conditions, computed in the same run on the same rows and reply tokens:
- none:     no prefix at all (the plain LM on the chat-templated prompt);
- zero:     the prefix from a zero latent (what --ablate-conditioning feeds the projector);
- shuffled: the prefix from another held-out pair's prediction (a fixed derangement);
- matched:  the prefix from this pair's own predicted next latent;
- text_rag: no prefix; the retrieval decoder's answer (the training reply nearest the prediction) given to the
            LLM as text in the prompt: what the same world model gives an LLM without a bridge;
- oracle:   the prefix from the teacher's latent of the true reply (what a perfect world model would predict,
            through the same bridge): the conditioning channel's ceiling.
The headline is the relative gain of matched over shuffled, with a paired bootstrap interval; every row's gain
over shuffled and over none is reported beside it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
import torch

from textjepa.bridge.data import (
    LMExample,
    PairRecord,
    conditioning_latents,
    derangement,
    lm_examples,
    read_pairs,
    retrieved_replies,
    split_pairs,
    text_rag_prompt_ids,
)
from textjepa.bridge.scoring import reply_nll
from textjepa.config import ConditioningEvalConfig
from textjepa.data.sources import resolve_data
from textjepa.decoders.hf_model import CausalLM, load_causal_lm
from textjepa.decoders.models import resolve_decoder_model
from textjepa.decoders.prefix_bridge import PrefixProjector, check_prefix_tokens, load_bridge
from textjepa.errors import TextJepaError
from textjepa.eval.metrics import write_json_report
from textjepa.inference.world import WorldInference
from textjepa.io import RunKind
from textjepa.precision import autocast
from textjepa.runtime import choose_precision, configure_threads, resolve_device
from textjepa.settings import Settings

ROWS = ("none", "zero", "shuffled", "matched", "text_rag", "oracle")
LABELS = {"text_rag": "text-RAG"}
BASELINES = ("shuffled", "none")
PREFIX_ROWS = ("zero", "shuffled", "matched", "oracle")  # the rows conditioned through the bridge
BOOTSTRAP_SAMPLES = 1000
TEXT_RAG_SAMPLES = 3  # retrieved replies shown in the JSON report


def relative_gain(matched: float, other: float) -> float:
    """How much lower matched NLL is than another condition's, as a fraction of the other's."""
    return (other - matched) / other if other else float("nan")


def bootstrap_gains(sums: dict[str, np.ndarray], counts: np.ndarray, seed: int) -> dict[tuple[str, str], list]:
    """95% intervals of every row's gain over each baseline, resampling pairs (the same resamples for all)."""
    rng = np.random.default_rng(seed)
    n = len(counts)
    picks = rng.integers(0, n, size=(BOOTSTRAP_SAMPLES, n))
    tokens = counts[picks].sum(1)
    means = {name: sums[name][picks].sum(1) / tokens for name in sums}
    out = {}
    for base in BASELINES:
        for name in sums:
            if name != base:
                gains = (means[base] - means[name]) / means[base]
                out[(name, base)] = [float(v) for v in np.percentile(gains, [2.5, 97.5])]
    return out


@dataclass
class ConditionRows:
    """What every row conditions on, for the same held-out pairs (aligned with `examples`)."""

    pairs: list[PairRecord]
    examples: list[LMExample]
    latents: dict[str, torch.Tensor]  # the projector's inputs of the PREFIX_ROWS, [N, dim] on the device
    retrieved: list[str]  # the retrieval decoder's answer per pair (text-RAG)
    rag_prompts: list[list[int]]  # text-RAG's prompt ids per pair


def normalized_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def build_rows(
    lm: CausalLM, model: WorldInference, held_out: list[PairRecord], cfg: ConditioningEvalConfig
) -> ConditionRows:
    examples = lm_examples(lm, held_out, cfg.max_prompt_tokens, cfg.max_reply_tokens)
    by_record = {p.record: p for p in held_out}
    pairs = [by_record[e.record] for e in examples]
    device = model.device
    predicted = conditioning_latents(model, pairs).to(device)
    oracle = conditioning_latents(model, pairs, oracle=True).to(device)
    latents = {
        "zero": torch.zeros_like(predicted),
        "shuffled": predicted[derangement(len(examples), cfg.seed).to(device)],
        "matched": predicted,
        "oracle": oracle,
    }
    retrieved = retrieved_replies(model, [p.context for p in pairs])
    rag_prompts = [text_rag_prompt_ids(lm, p.context, r, cfg.max_prompt_tokens) for p, r in zip(pairs, retrieved)]
    return ConditionRows(pairs, examples, latents, retrieved, rag_prompts)


def score_rows(
    lm: CausalLM, projector: PrefixProjector, rows: ConditionRows, batch: int, precision: str, progress: bool
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per pair and row: the summed reply NLL; and the pair's reply token count (the same in every row)."""
    n = len(rows.examples)
    sums = {name: np.zeros(n) for name in ROWS}
    counts = {name: np.zeros(n) for name in ROWS}
    started = time.time()
    with torch.no_grad(), autocast(lm.device, precision):
        for start in range(0, n, batch):
            span = slice(start, start + batch)
            chunk = rows.examples[span]
            prompts, replies = [r.prompt_ids for r in chunk], [r.reply_ids for r in chunk]
            inputs = {name: (projector(rows.latents[name][span]), prompts) for name in PREFIX_ROWS}
            inputs["none"] = (None, prompts)
            inputs["text_rag"] = (None, rows.rag_prompts[span])
            for name in ROWS:
                prefix, row_prompts = inputs[name]
                row_sums, row_counts = reply_nll(lm, prefix, row_prompts, replies)
                sums[name][span] = row_sums.cpu().numpy()
                counts[name][span] = row_counts.cpu().numpy()
            if progress:
                print(f"  {min(n, start + batch)}/{n} pairs ({time.time() - started:.0f}s)", flush=True)
    for name in ROWS:
        if not np.array_equal(counts[name], counts["none"]):
            raise AssertionError(f"row {name} scored other reply tokens than row none")
    return sums, counts["none"]


def summarize(sums: dict[str, np.ndarray], counts: np.ndarray, rows: ConditionRows, seed: int) -> dict:
    tokens = counts.sum()
    nll = {name: float(sums[name].sum() / tokens) for name in ROWS}
    per_pair = {name: sums[name] / counts for name in ROWS}
    intervals = bootstrap_gains(sums, counts, seed)
    gains = {
        name: {
            f"vs_{base}{suffix}": value
            for base in BASELINES
            if base != name
            for suffix, value in (("", relative_gain(nll[name], nll[base])), ("_ci95", intervals[(name, base)]))
        }
        for name in ROWS
    }
    same_text = [normalized_text(r) == normalized_text(p.reply) for r, p in zip(rows.retrieved, rows.pairs)]
    return {
        "pairs": len(rows.examples),
        "reply_tokens": int(tokens),
        "nll": nll,
        "gains": gains,
        "gain_matched_vs_shuffled": gains["matched"]["vs_shuffled"],
        "gain_matched_vs_shuffled_ci95": gains["matched"]["vs_shuffled_ci95"],
        "gain_matched_vs_zero": relative_gain(nll["matched"], nll["zero"]),
        "gain_matched_vs_none": gains["matched"]["vs_none"],
        "matched_better_than_shuffled_fraction": float((per_pair["matched"] < per_pair["shuffled"]).mean()),
        # The index holds training replies only; a held-out reply can still share its exact text with one.
        "text_rag_retrieved_true_text": int(sum(same_text)),
        "text_rag_samples": [
            {"context": p.context, "retrieved": r, "reply": p.reply}
            for p, r in list(zip(rows.pairs, rows.retrieved))[:TEXT_RAG_SAMPLES]
        ],
    }


def evaluate_conditioning(cfg: ConditioningEvalConfig, settings: Settings | None = None) -> dict:
    cfg.validate()
    configure_threads(settings)
    device = resolve_device(cfg.device)
    precision = choose_precision(cfg.precision, device)
    # The LM's and the projector's forwards run in the chosen precision; the NLL is computed in fp32 and the world
    # model's latents (computed once, small) in fp32.
    scope = "; autocast covers the LM and the projector" if precision.precision == "bf16" else ""
    print(precision.describe() + scope, flush=True)
    model = WorldInference.load(cfg.world_model, device)
    checkpoint = model.checkpoint
    bridge = load_bridge(cfg.bridge)
    bridge.check_world(checkpoint)
    check_prefix_tokens(bridge.prefix_tokens)
    data_arg = cfg.data or checkpoint.data.source
    if not data_arg:
        raise TextJepaError("no DATA given and the world checkpoint does not record its training data")
    data_path = resolve_data(data_arg, cfg.data_dir, RunKind.WORLD, settings)
    pairs, stats = read_pairs(data_path, checkpoint)
    held_out = split_pairs(pairs, checkpoint, "val")[: cfg.max_pairs]
    print(f"{data_path}: {stats.summary()}; evaluating {len(held_out)} held-out pairs (world model's val split)")
    if len(held_out) < 2:
        raise TextJepaError(
            f"{len(held_out)} held-out pairs in {data_path} under the world model's split; need at least 2"
        )
    source = resolve_decoder_model(cfg.decoder_model, bridge.decoder.path, settings)
    lm = load_causal_lm(source, device, settings=settings)
    bridge.check_decoder(lm.fingerprint())
    projector = bridge.projector.to(device).eval()
    rows = build_rows(lm, model, held_out, cfg)
    started = time.time()
    sums, counts = score_rows(lm, projector, rows, cfg.batch, precision.precision, cfg.progress)
    report = {
        "world_model": str(checkpoint.path),
        "bridge": str(bridge.path),
        "decoder_model": str(source),
        "data": str(data_path),
        "split": "val",
        "split_rule": {k: checkpoint.data.to_info()[k] for k in ("val_fraction", "seed", "min_tokens")},
        "prefix_tokens": bridge.prefix_tokens,
        "precision": precision.precision,
        **summarize(sums, counts, rows, cfg.seed),
        "seconds": round(time.time() - started, 1),
    }
    print(format_report(report))
    if cfg.json_path:
        write_json_report(cfg.json_path, report)
    return report


def _percent(value: float, interval: list | None = None) -> str:
    text = f"{100 * value:+.2f}%"
    return text if interval is None else f"{text} ({100 * interval[0]:+.1f} .. {100 * interval[1]:+.1f})"


def format_report(report: dict) -> str:
    lines = [
        f"reply NLL per token on {report['pairs']} held-out pairs ({report['reply_tokens']} tokens, the same in every "
        "row); gains with 95% paired-bootstrap intervals",
        f"  {'row':<10}{'NLL':>8}   {'gain vs shuffled':<28}gain vs none",
    ]
    for name in ROWS:
        gain = report["gains"][name]
        cells = [
            _percent(gain[f"vs_{base}"], gain[f"vs_{base}_ci95"]) if f"vs_{base}" in gain else "-" for base in BASELINES
        ]
        lines.append(f"  {LABELS.get(name, name):<10}{report['nll'][name]:8.4f}   {cells[0]:<28}{cells[1]}")
    low, high = report["gain_matched_vs_shuffled_ci95"]
    lines.append(
        f"gain matched vs shuffled: {100 * report['gain_matched_vs_shuffled']:+.2f}% "
        f"(95% CI {100 * low:+.2f}% .. {100 * high:+.2f}%; matched lower on "
        f"{100 * report['matched_better_than_shuffled_fraction']:.0f}% of pairs)"
    )
    lines.append(
        "text-RAG: no prefix, the retrieval decoder's answer in the prompt; it had the true reply's exact text "
        f"(a training reply with the same text) on {report['text_rag_retrieved_true_text']} of {report['pairs']} pairs"
    )
    return "\n".join(lines)
