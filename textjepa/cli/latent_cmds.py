"""`latent` (JEPA pretraining) and `eval-jepa`."""

from __future__ import annotations

import argparse

from textjepa.cli.common import (
    add_checked_shape_args,
    add_shape_args,
    add_train_args,
    data_config,
    model_config,
    shape_overrides,
    train_config,
)
from textjepa.config import EvalConfig, LatentConfig, MaskingConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = LatentConfig()
    p = subparsers.add_parser(
        "latent",
        help="pretrain the encoder with the JEPA objective",
        description=(
            "JEPA pretraining on a line file (or hub:<dataset_id>): `context<TAB>response`, "
            "`context|||response` or plain lines; only the left side is used. Writes "
            "model_latent_<size>.safetensors (+ _teacher), tokenizer.json, vocab_latent.txt, "
            "a metrics log and a PNG of the curves to --out-dir."
        ),
    )
    p.add_argument("data", metavar="DATA", help="line file or hub:<dataset_id>")
    add_shape_args(p, defaults.model, with_bridge=False)
    add_train_args(p, defaults.train, defaults.data)
    masking = p.add_argument_group("span masking")
    masking.add_argument(
        "--max-spans", type=int, default=defaults.masking.max_spans, help="spans per line (default %(default)s)"
    )
    masking.add_argument(
        "--max-span-len", type=int, default=defaults.masking.max_span_len, help="tokens per span (default %(default)s)"
    )
    masking.add_argument(
        "--max-masked-ratio",
        type=float,
        default=defaults.masking.max_masked_ratio,
        help="cap on masked share (default %(default)s)",
    )
    p.set_defaults(run=run_latent)

    e = subparsers.add_parser(
        "eval-jepa",
        help="evaluate a JEPA encoder on held-out masked spans",
        description=(
            "Masked-span prediction on held-out lines: cosine_mean, l2_mean, in-batch retrieval top1/top5/MRR "
            "and mean rank, beside an untrained encoder of the same shape. Shapes come from the checkpoint."
        ),
    )
    e.add_argument("model", metavar="MODEL", help="model_latent_*.safetensors")
    e.add_argument(
        "data", metavar="DATA", nargs="?", default=None, help="line file or hub:<id> (default: the training data)"
    )
    add_eval_args(e)
    add_checked_shape_args(e, with_bridge=False)
    e.set_defaults(run=run_eval_jepa)


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    defaults = EvalConfig()
    parser.add_argument("--vocab", default=None, help="tokenizer.json or vocab file; must be the model's own")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="evaluation batches (default %(default)s)")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="lines per batch (default %(default)s)")
    parser.add_argument(
        "--split",
        choices=("auto", "val", "train", "all"),
        default="auto",
        help="auto: the held-out split when DATA is the training data",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="masking seed (default %(default)s)")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu or cuda")
    parser.add_argument("--data-dir", default=defaults.data_dir, help="hub and token caches (default %(default)s)")
    parser.add_argument(
        "--json", dest="json_path", default=None, metavar="FILE", help="also write the metrics as JSON (- for stdout)"
    )


def eval_config(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        model=args.model,
        data=args.data,
        vocab=args.vocab,
        steps=args.steps,
        batch=args.batch,
        split=args.split,
        seed=args.seed,
        device=args.device,
        json_path=args.json_path,
        data_dir=args.data_dir,
        shape_overrides=shape_overrides(args),
    )


def run_latent(args: argparse.Namespace) -> int:
    from textjepa.objectives.jepa_loss import JepaLossConfig
    from textjepa.objectives.regularizers import RegularizerConfig
    from textjepa.train.latent import train_latent

    defaults = LatentConfig()
    cfg = LatentConfig(
        data=data_config(args, args.data, defaults.data),
        model=model_config(args, defaults.model),
        train=train_config(args, defaults.train),
        masking=MaskingConfig(args.max_spans, args.max_span_len, args.max_masked_ratio),
        loss=JepaLossConfig(RegularizerConfig(regularizer=args.regularizer)),
    )
    train_latent(cfg)
    return 0


def run_eval_jepa(args: argparse.Namespace) -> int:
    from textjepa.eval.jepa import evaluate_jepa

    evaluate_jepa(eval_config(args))
    return 0
