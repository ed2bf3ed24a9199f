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
            "Builds a corpus from the docstrings of the installed Python standard library, trains a world model "
            "on its question -> answer pairs on all-MiniLM-L6-v2 (the default backbone, fine-tuned; with a JEPA "
            "stage first when --latent-steps is given, evaluated beside an untrained encoder), evaluates it beside "
            "the copy, mean and TF-IDF baselines and answers prompts through the retrieval decoder. About 5 "
            "minutes on 2 CPU cores."
        ),
        backbone_recipe=True,
    )


def run_demo_command(cfg: DemoConfig, args: argparse.Namespace, settings: Settings) -> int:
    from textjepa.demo import run_demo

    run_demo(cfg, settings)
    return 0
