"""What the subcommands share: a subcommand whose options are generated from its config, and the shape checks."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from textjepa.cli.options import add_config_arguments, given_options, iter_options
from textjepa.config import CHECKED_SHAPE, ModelConfig
from textjepa.settings import Settings

ConfigT = TypeVar("ConfigT")
# A command's work: its config (defaults with the user's options laid over), the parsed arguments (for the few
# things that are not settings, such as which options were given) and the environment's settings.
Runner = Callable[[ConfigT, argparse.Namespace, Settings], "int | None"]

SHAPE_PREFIX = "shape"


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    defaults: ConfigT,
    run: Runner,
    *,
    help: str,
    description: str,
    tweaks: Mapping[str, Mapping[str, Any]] | None = None,
) -> argparse.ArgumentParser:
    """A subcommand with an option for every field of `defaults` (whose values are this command's defaults);
    `run` gets those defaults with the user's options laid over them."""
    parser = subparsers.add_parser(name, help=help, description=description)
    add_config_arguments(parser, defaults, tweaks=tweaks)
    parser.set_defaults(run=run, config_defaults=defaults)
    return parser


def add_shape_checks(parser: argparse.ArgumentParser, with_cond_head: bool) -> None:
    """For commands that load a checkpoint: shape options are optional and must agree with it (not in --help)."""
    names = [name for name in CHECKED_SHAPE if with_cond_head or name != "cond_dim"]
    flags = " ".join(f"--{option.flag}" for option in iter_options(ModelConfig(), only=names))
    group = parser.add_argument_group(
        "shape checks (optional; must match the checkpoint)", f"{flags}: if given, must equal the checkpoint's"
    )
    add_config_arguments(parser, ModelConfig(), prefix=SHAPE_PREFIX, only=names, hidden=True, group=group)


def shape_checks(args: argparse.Namespace) -> dict:
    """The shape options given, by name (`max_seq`): the checkpoint must agree with each."""
    return given_options(args, iter_options(ModelConfig(), SHAPE_PREFIX))
