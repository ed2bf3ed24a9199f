"""`demo`: the embedded default, end to end with no downloads."""

from __future__ import annotations

import argparse

from textjepa.cli.common import add_command
from textjepa.config import DemoConfig
from textjepa.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    add_command(
        subparsers,
        "demo",
        DemoConfig(),
        run_demo_command,
        help="the embedded default: train and run everything on local text, no downloads",
        description=(
            "Builds a corpus from the docstrings of the installed Python standard library, pretrains a small "
            "JEPA encoder, evaluates it beside an untrained baseline, trains a world model on question -> "
            "answer pairs with that encoder, evaluates it beside the copy and mean baselines and answers "
            "prompts through the retrieval decoder. A few minutes on 2 CPU cores."
        ),
    )


def run_demo_command(cfg: DemoConfig, args: argparse.Namespace, settings: Settings) -> int:
    from textjepa.demo import run_demo

    run_demo(cfg, settings)
    return 0
