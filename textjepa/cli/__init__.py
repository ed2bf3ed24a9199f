"""The `textjepa` command: subcommands, plus the seed's `--latent ...` flag style.

"The seed" is the original system this project re-implements; its documented command style
(`textjepa --latent DATA [steps] [batch] ...`, positional values after a flag) is rewritten by seed_form.py into
the subcommands before parsing. Each subcommand's options are generated from its config dataclass
(options.py); the work itself lives in the library. The environment is read here, once, into a `Settings`.
User mistakes surface as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from textjepa.cli.common import recipe_defaults
from textjepa.cli.options import config_from_args
from textjepa.cli.seed_form import translate_seed_form
from textjepa.errors import Interrupted, TextJepaError
from textjepa.io import is_disk_error
from textjepa.settings import Settings

# One module per group of subcommands; each has register(subparsers).
COMMAND_MODULES = (
    "textjepa.cli.latent_cmds",
    "textjepa.cli.world_cmds",
    "textjepa.cli.demo_cmd",
    "textjepa.cli.prepare_cmds",
    "textjepa.cli.serve_cmd",
    "textjepa.cli.bridge_cmds",
    "textjepa.cli.embed_cmd",
    "textjepa.cli.export_cmd",
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
    return run_guarded(lambda: _dispatch(argv))


def _dispatch(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(translate_seed_form(argv))
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_USER_ERROR
    return int(args.run(command_config(args), args, Settings.from_env()) or 0)


def command_config(args: argparse.Namespace) -> Any:
    """The parsed command's config: its defaults with the options the user gave laid over them."""
    defaults = getattr(args, "config_defaults", None)
    if defaults is None:
        return None
    if getattr(args, "backbone_recipe", None):  # a training command: the defaults of the encoder it starts from
        defaults = recipe_defaults(args.backbone_recipe, defaults, args)
    return config_from_args(defaults, args)


def run_guarded(work: Callable[[], int]) -> int:
    """Run a command's work; a user mistake becomes one `error:` line and exit code 2, never a traceback."""
    try:
        return work()
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TextJepaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if not is_disk_error(exc):
            raise
        # A write no file-writer here turned into a DiskError: still one line (a full or read-only disk is the
        # user's to fix). Whatever was written before is whole (every file is written under a temporary name).
        print(f"error: cannot write {exc.filename or 'a file'}: {exc.strerror}", file=sys.stderr)
        return EXIT_USER_ERROR
