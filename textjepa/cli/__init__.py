"""The `textjepa` command: subcommands, plus the seed's `--latent ...` flag style.

Each subcommand module registers its parsers and maps arguments onto a config dataclass; the work
itself lives in the library. User mistakes surface as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from textjepa.cli.seed_form import translate_seed_form
from textjepa.errors import TextJepaError

# One module per group of subcommands; each has register(subparsers).
COMMAND_MODULES = (
    "textjepa.cli.latent_cmds",
    "textjepa.cli.world_cmds",
    "textjepa.cli.demo_cmd",
    "textjepa.cli.prepare_cmds",
    "textjepa.cli.serve_cmd",
    "textjepa.cli.bridge_cmds",
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line plus a hint instead of the whole usage text."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        self.exit(EXIT_USER_ERROR, f"error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="textjepa",
        description=(
            "Train a JEPA-style world model of text and conversation and run it as an agent. "
            "The seed's flag style works too: textjepa --latent DATA [steps] [batch] ..."
        ),
    )
    from textjepa import __version__

    parser.add_argument("--version", action="version", version=f"textjepa {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = translate_seed_form(argv)
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "run", None):
            parser.print_help()
            return EXIT_USER_ERROR
        result = args.run(args)
        return int(result or 0)
    except TextJepaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
