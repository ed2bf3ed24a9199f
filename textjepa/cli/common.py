"""What the subcommands share: a subcommand whose options are generated from its config, and the shape checks."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from textjepa.cli.options import add_config_arguments, given_options, iter_options
from textjepa.config import CHECKED_SHAPE, DEFAULT_BACKBONE, PRETRAINED_RECIPES, SCRATCH_SHAPE, ModelConfig
from textjepa.fields import with_values
from textjepa.models.config import SCRATCH
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
    backbone_recipe: bool = False,
) -> argparse.ArgumentParser:
    """A subcommand with an option for every field of `defaults` (whose values are this command's defaults);
    `run` gets those defaults with the user's options laid over them. `backbone_recipe`: a training command whose
    encoder is DEFAULT_BACKBONE unless told otherwise, with PRETRAINED_RECIPES[name] on a pretrained one."""
    if backbone_recipe:
        defaults = with_values(defaults, {"model.backbone": DEFAULT_BACKBONE})
        description += " " + describe_recipe(name, defaults)
    parser = subparsers.add_parser(name, help=help, description=description)
    add_config_arguments(parser, defaults, tweaks=tweaks)
    parser.set_defaults(run=run, config_defaults=defaults, backbone_recipe=name if backbone_recipe else None)
    return parser


def chosen_backbone(args: argparse.Namespace) -> str:
    """The encoder a training command starts from: --backbone if given; else scratch when a scratch-only shape
    option (--dim, --layers, --heads, --max-vocab) is given; else the --init-encoder checkpoint's; else
    DEFAULT_BACKBONE."""
    if hasattr(args, "model.backbone"):
        return getattr(args, "model.backbone")
    if any(hasattr(args, f"model.{name}") for name in SCRATCH_SHAPE):
        return SCRATCH
    init = getattr(args, "init_encoder", None)
    if init:
        from textjepa.checkpoint import checkpoint_config, pick_model_file

        return checkpoint_config(pick_model_file(init)).backbone
    return DEFAULT_BACKBONE


def recipe_defaults(command: str, defaults: ConfigT, args: argparse.Namespace) -> ConfigT:
    """`defaults` for the encoder the command starts from: its backbone set, and on a pretrained one the
    command's PRETRAINED_RECIPES laid over them (the user's options are laid over the result)."""
    backbone = chosen_backbone(args)
    recipe = PRETRAINED_RECIPES[command] if backbone != SCRATCH else {}
    return with_values(defaults, {**recipe, "model.backbone": backbone})


def describe_recipe(command: str, defaults: Any) -> str:
    """The --help sentence that says which defaults a pretrained backbone changes."""
    flags = {option.dest: option.flag for option in iter_options(defaults)}
    # A setting the command has no option for (the demo's JEPA learning rate) is named by its config path.
    changed = ", ".join(
        f"--{flags[dest]} {value}" if dest in flags else f"{dest} {value}"
        for dest, value in PRETRAINED_RECIPES[command].items()
    )
    return (
        f"The encoder is --backbone {DEFAULT_BACKBONE} unless another --backbone, --init-encoder or a scratch shape "
        f"option (--dim, --layers, --heads, --max-vocab: the scratch encoder) is given. On a pretrained backbone "
        f"these defaults differ from those listed below (measured in docs/results.md): {changed}."
    )


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
