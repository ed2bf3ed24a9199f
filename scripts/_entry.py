"""Shared by the seed's script names: run a `textjepa` subcommand from a checkout, seed flags accepted.

The seed spelled flags with underscores (`--input_dir`, `--max_rows`); they are rewritten to the
dashed names of the `textjepa` CLI. The checkout's own package is put first on sys.path, so
`python scripts/<name>.py ...` works without installing and never picks up another copy.
"""

from __future__ import annotations

import sys
from pathlib import Path


def dashed(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("--") and "_" in arg:
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def run(command: list[str], argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from textjepa.cli import main

    return main([*command, *dashed(list(sys.argv[1:] if argv is None else argv))])
