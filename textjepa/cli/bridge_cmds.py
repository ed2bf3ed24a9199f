"""`train-bridge` and `eval-conditioning`: the prefix bridge between a world model and an LLM."""

from __future__ import annotations

import argparse

from textjepa.cli.common import add_command
from textjepa.config import BridgeTrainConfig, ConditioningEvalConfig
from textjepa.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    add_command(
        subparsers,
        "train-bridge",
        BridgeTrainConfig(),
        run_train_bridge,
        help="train the prefix projector that conditions an LLM on the world model",
        description=(
            "With the LLM and the world model frozen, train a projector (Linear -> GELU -> Linear) from the world "
            "model's predicted next latent to K soft-prompt embeddings placed before the chat-templated context, "
            "to minimise the LLM's loss on the true next turn. Learns on the world model's training split. Writes "
            "bridge_<lm>_<world>.safetensors (+ .metrics.jsonl); its metadata names the LLM and the world model."
        ),
        tweaks={"train.batch": {"help": "pairs per step"}},
    )
    add_command(
        subparsers,
        "eval-conditioning",
        ConditioningEvalConfig(),
        run_eval_conditioning,
        help="reply NLL with no, zero, shuffled, matched, text-RAG and oracle conditioning",
        description=(
            "On the world model's held-out pairs, all in one run on the same reply tokens: the LLM's mean per-token "
            "NLL of the true reply with no prefix (none), the prefix from a zero latent (zero), from another pair's "
            "prediction (shuffled), from the pair's own prediction (matched), no prefix but the retrieval decoder's "
            "answer (the training reply nearest the prediction) in the prompt as text, before the last user turn's "
            "text as 'Relevant answer: <reply>' and a blank line (text-RAG), and the prefix from the teacher's "
            "latent of the true reply (oracle: a perfect world model); each row's gain over shuffled and none."
        ),
    )


def run_train_bridge(cfg: BridgeTrainConfig, args: argparse.Namespace, settings: Settings) -> int:
    cfg.validate()  # before the import below: a bad option is reported without importing torch
    from textjepa.bridge.train import train_bridge

    train_bridge(cfg, settings)
    return 0


def run_eval_conditioning(cfg: ConditioningEvalConfig, args: argparse.Namespace, settings: Settings) -> int:
    cfg.validate()  # before the import below: a bad option is reported without importing torch
    from textjepa.bridge.evaluate import evaluate_conditioning

    evaluate_conditioning(cfg, settings)
    return 0
