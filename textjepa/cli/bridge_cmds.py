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
