"""`train-bridge` and `eval-conditioning`: the prefix bridge between a world model and an LLM."""

from __future__ import annotations

import argparse

from textjepa.cli.common import add_command, library_call
from textjepa.config import BridgeTrainConfig, ConditioningEvalConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    add_command(
        subparsers,
        "train-bridge",
        BridgeTrainConfig(),
        library_call("textjepa.bridge.train:train_bridge"),
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
        library_call("textjepa.bridge.evaluate:evaluate_conditioning"),
        help="reply NLL with matched, shuffled, zero and no conditioning",
        description=(
            "On the world model's held-out pairs: the LLM's mean per-token NLL of the true reply with the prefix "
            "from the pair's own prediction (matched), another pair's (shuffled), a zero latent (zero) and no "
            "prefix (none), all in one run, and the relative gain of matched over shuffled."
        ),
    )
