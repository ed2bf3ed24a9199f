"""`latent` (JEPA pretraining) and `eval-jepa`."""

from __future__ import annotations

import argparse
import dataclasses

from textjepa.cli.common import add_command, add_shape_checks, shape_checks
from textjepa.cli.options import given_options, iter_options
from textjepa.config import EvalConfig, LatentConfig
from textjepa.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    add_command(
        subparsers,
        "latent",
        LatentConfig(),
        run_latent,
        help="pretrain the encoder with the JEPA objective",
        description=(
            "JEPA pretraining on a line file (or hub:<dataset_id>): `context<TAB>response`, "
            "`context|||response` or plain lines; only the left side is used. Writes "
            "model_latent_<size>.safetensors (+ _teacher), tokenizer.json, vocab_latent.txt, "
            "a metrics log and a PNG of the curves to --out-dir."
        ),
        backbone_recipe=True,
    )
    evaluate = add_command(
        subparsers,
        "eval-jepa",
        EvalConfig(),
        run_eval_jepa,
        help="evaluate a JEPA encoder on held-out masked spans",
        description=(
            "Masked-span prediction on held-out lines: cosine_mean, l2_mean, in-batch retrieval top1/top5/MRR "
            "and mean rank, beside an untrained encoder of the same shape. Shapes come from the checkpoint."
        ),
        tweaks={"model": {"help": "model_latent_*.safetensors"}},
    )
    add_shape_checks(evaluate, with_cond_head=False)


def run_latent(cfg: LatentConfig, args: argparse.Namespace, settings: Settings) -> int:
    cfg.validate()  # before the import below: a bad option is reported without importing torch
    from textjepa.train.latent import train_latent

    # The shape options given: a --backbone refuses those that disagree with it.
    shape = given_options(args, (option for option in iter_options(LatentConfig()) if option.dest.startswith("model.")))
    train_latent(cfg, settings, shape)
    return 0


def run_eval_jepa(cfg: EvalConfig, args: argparse.Namespace, settings: Settings) -> int:
    from textjepa.eval.jepa import evaluate_jepa

    evaluate_jepa(dataclasses.replace(cfg, shape_overrides=shape_checks(args)), settings)
    return 0
