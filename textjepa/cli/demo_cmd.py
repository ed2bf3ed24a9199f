"""`demo`: the embedded default, end to end with no downloads."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    return None
