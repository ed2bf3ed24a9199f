"""Argument groups shared by several subcommands, mapped onto the config dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

from textjepa.config import DataConfig, ModelConfig, TrainConfig
from textjepa.objectives.regularizers import RegularizerConfig

ConfigT = TypeVar("ConfigT")

SHAPE_ARGS = ("dim", "max_seq", "layers", "heads", "max_vocab", "bridge_dim")


def add_shape_args(
    parser: argparse.ArgumentParser, defaults: ModelConfig, with_bridge: bool, with_vocab: bool = True
) -> None:
    group = parser.add_argument_group("model shape")
    group.add_argument("--dim", type=int, default=defaults.dim, help="latent width (default %(default)s)")
    group.add_argument(
        "--max-seq", type=int, default=defaults.max_seq, help="tokens per line kept (default %(default)s)"
    )
    group.add_argument("--layers", type=int, default=defaults.layers, help="transformer blocks (default %(default)s)")
    group.add_argument(
        "--heads", type=int, default=defaults.heads, help="attention heads, must divide dim (default %(default)s)"
    )
    if with_vocab:
        group.add_argument(
            "--max-vocab", type=int, default=defaults.vocab_size, help="BPE vocabulary size (default %(default)s)"
        )
    if with_bridge:
        group.add_argument(
            "--bridge-dim",
            type=int,
            default=defaults.bridge_dim,
            help="conditioning vector width (default %(default)s)",
        )


def add_checked_shape_args(parser: argparse.ArgumentParser, with_bridge: bool) -> None:
    """For commands that load a checkpoint: shape arguments are optional and must agree with it."""
    group = parser.add_argument_group("shape checks (optional; must match the checkpoint)")
    for name in ("dim", "max-seq", "layers", "heads") + (("bridge-dim",) if with_bridge else ()):
        group.add_argument(f"--{name}", type=int, default=None, help=argparse.SUPPRESS)
    group.description = (
        "--dim --max-seq --layers --heads"
        + (" --bridge-dim" if with_bridge else "")
        + ": if given, must equal the checkpoint's"
    )


def shape_overrides(args: argparse.Namespace) -> dict:
    return {
        name: getattr(args, name)
        for name in ("dim", "max_seq", "layers", "heads", "bridge_dim")
        if getattr(args, name, None) is not None
    }


def model_config(args: argparse.Namespace, defaults: ModelConfig) -> ModelConfig:
    return ModelConfig(
        vocab_size=args.max_vocab,
        dim=args.dim,
        layers=args.layers,
        heads=args.heads,
        max_seq=args.max_seq,
        bridge_dim=getattr(args, "bridge_dim", defaults.bridge_dim),
    )


def add_train_args(parser: argparse.ArgumentParser, defaults: TrainConfig, data: DataConfig) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps (default %(default)s)")
    group.add_argument(
        "--batch", type=int, default=defaults.batch, help="lines per batch (per process) (default %(default)s)"
    )
    group.add_argument(
        "--global-batch",
        type=int,
        default=defaults.global_batch or None,
        metavar="N",
        help="lines per step over all processes; each of W torchrun processes takes N/W (overrides --batch)",
    )
    group.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (default %(default)s)")
    group.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default %(default)s)")
    group.add_argument(
        "--val-fraction", type=float, default=data.val_fraction, help="held-out share of lines (default %(default)s)"
    )
    group.add_argument(
        "--eval-every",
        type=int,
        default=defaults.eval_every,
        help="validate and save every N steps (default %(default)s)",
    )
    group.add_argument(
        "--eval-batches", type=int, default=defaults.eval_batches, help="validation batches (default %(default)s)"
    )
    group.add_argument(
        "--regularizer",
        choices=("vicreg", "sigreg"),
        default=RegularizerConfig().regularizer,
        help="anti-collapse term (default %(default)s)",
    )
    group.add_argument(
        "--ema-start",
        type=float,
        default=defaults.ema_start,
        help="teacher EMA momentum at step 0 (default %(default)s)",
    )
    group.add_argument(
        "--ema-end", type=float, default=defaults.ema_end, help="teacher EMA momentum at the end (default %(default)s)"
    )
    group.add_argument("--no-bucket", action="store_true", help="do not group batches by length (more padding)")
    group.add_argument("--device", default=defaults.device, help="auto, cpu or cuda (default %(default)s)")
    group.add_argument(
        "--out-dir", default=defaults.out_dir, help="where checkpoints and logs go (default %(default)s)"
    )
    group.add_argument(
        "--resume",
        default=None,
        metavar="STATE|auto",
        help="continue from a training state file, or 'auto' for the newest in --out-dir",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    data_group = parser.add_argument_group("data")
    data_group.add_argument("--data-dir", default=data.data_dir, help="hub and token caches (default %(default)s)")
    data_group.add_argument(
        "--max-line-bytes", type=int, default=data.max_line_bytes, help="longer lines are skipped (default %(default)s)"
    )
    data_group.add_argument(
        "--min-tokens", type=int, default=data.min_tokens, help="shorter records are skipped (default %(default)s)"
    )


def train_config(args: argparse.Namespace, defaults: TrainConfig) -> TrainConfig:
    return TrainConfig(
        **{
            **vars(defaults),
            "steps": args.steps,
            "batch": args.batch,
            "global_batch": args.global_batch or 0,
            "lr": args.lr,
            "seed": args.seed,
            "eval_every": args.eval_every,
            "eval_batches": args.eval_batches,
            "ema_start": args.ema_start,
            "ema_end": args.ema_end,
            "bucket_by_length": not args.no_bucket,
            "device": args.device,
            "out_dir": args.out_dir,
            "resume": args.resume,
            "progress": not args.no_progress,
        }
    )


def data_config(args: argparse.Namespace, path: str, defaults: DataConfig) -> DataConfig:
    return DataConfig(
        **{
            **vars(defaults),
            "path": path,
            "data_dir": args.data_dir,
            "max_line_bytes": args.max_line_bytes,
            "min_tokens": args.min_tokens,
            "val_fraction": args.val_fraction,
        }
    )


def config_from_args(cls: type[ConfigT], args: argparse.Namespace, **renamed: Any) -> ConfigT:
    """A command's config dataclass from the parsed arguments of the same names; `renamed` gives the
    fields whose flag is spelled otherwise, and `progress` follows --no-progress."""
    names = {field.name for field in dataclasses.fields(cls)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if "progress" in names and hasattr(args, "no_progress"):
        values["progress"] = not args.no_progress
    values.update(renamed)
    return cls(**values)
