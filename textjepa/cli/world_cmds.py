"""`train-world`, `eval-world` and `infer` (filled in by the world-model work)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    return None
