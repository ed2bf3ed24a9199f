"""`demo`: the embedded default, end to end with no downloads."""

from __future__ import annotations

import argparse

from textjepa.config import DemoConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    d = DemoConfig()
    p = subparsers.add_parser(
        "demo",
        help="the embedded default: train and run everything on local text, no downloads",
        description=(
            "Builds a corpus from the docstrings of the installed Python standard library, pretrains a small "
            "JEPA encoder, evaluates it beside an untrained baseline, trains a world model on question -> "
            "answer pairs with that encoder, evaluates it beside the copy and mean baselines and answers "
            "prompts through the retrieval decoder. A few minutes on 2 CPU cores."
        ),
    )
    p.add_argument("--out-dir", default=d.out_dir, help="where everything goes (default %(default)s)")
    p.add_argument("--latent-steps", type=int, default=d.latent_steps, help="JEPA steps (default %(default)s)")
    p.add_argument("--world-steps", type=int, default=d.world_steps, help="world-model steps (default %(default)s)")
    p.add_argument("--dim", type=int, default=d.dim, help="latent width (default %(default)s)")
    p.add_argument("--layers", type=int, default=d.layers, help="transformer blocks (default %(default)s)")
    p.add_argument("--heads", type=int, default=d.heads, help="attention heads (default %(default)s)")
    p.add_argument("--max-seq", type=int, default=d.max_seq, help="tokens per line (default %(default)s)")
    p.add_argument("--max-vocab", type=int, default=d.max_vocab, help="BPE vocabulary (default %(default)s)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="validate every N steps (default %(default)s)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--prompt", action="append", default=None, help="a prompt to answer at the end (repeatable)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from textjepa.demo import run_demo

    defaults = DemoConfig()
    run_demo(
        DemoConfig(
            out_dir=args.out_dir,
            dim=args.dim,
            layers=args.layers,
            heads=args.heads,
            max_seq=args.max_seq,
            max_vocab=args.max_vocab,
            latent_steps=args.latent_steps,
            world_steps=args.world_steps,
            eval_every=args.eval_every,
            device=args.device,
            progress=not args.no_progress,
            prompts=tuple(args.prompt) if args.prompt else defaults.prompts,
        )
    )
    return 0
