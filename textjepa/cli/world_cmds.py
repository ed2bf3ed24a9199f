"""`train-world`, `eval-world` and `infer`."""

from __future__ import annotations

import argparse
import json

from textjepa.cli.common import add_checked_shape_args, add_train_args, data_config, shape_overrides, train_config
from textjepa.cli.latent_cmds import add_eval_args, eval_config
from textjepa.config import InferConfig, WorldConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = WorldConfig()
    t = subparsers.add_parser(
        "train-world",
        help="train the next-turn world model and its conditioning head",
        description=(
            "Learn context -> next_turn transitions from `context<TAB>next_turn` or `context|||next_turn` lines "
            "(an optional third column is the action; default reply). Writes model_world_<size>.safetensors "
            "(+ _teacher), its retrieval index, tokenizer.json, vocab_world.txt, metrics and curves. "
            "With --init-encoder the encoder (and its tokenizer) comes from a latent checkpoint, or encoder, "
            "transition and bridge from a world checkpoint (fine-tuning)."
        ),
    )
    t.add_argument("data", metavar="DATA", help="pair file or hub:<dataset_id>")
    shape = t.add_argument_group("model shape (taken from --init-encoder when given; then they must agree)")
    m = defaults.model
    shape.add_argument("--dim", type=int, default=None, help=f"latent width (default {m.dim})")
    shape.add_argument("--max-seq", type=int, default=None, help=f"tokens per side kept (default {m.max_seq})")
    shape.add_argument("--layers", type=int, default=None, help=f"transformer blocks (default {m.layers})")
    shape.add_argument("--heads", type=int, default=None, help=f"attention heads (default {m.heads})")
    shape.add_argument("--max-vocab", type=int, default=None, help=f"BPE vocabulary size (default {m.vocab_size})")
    shape.add_argument(
        "--bridge-dim", type=int, default=None, help=f"conditioning vector width (default {m.bridge_dim})"
    )
    add_train_args(t, defaults.train, defaults.data)
    world = t.add_argument_group("world model")
    world.add_argument(
        "--init-encoder",
        nargs="+",
        default=None,
        metavar="PATH",
        help="model_latent_*.safetensors or model_world_*.safetensors (a glob that also names _teacher is fine)",
    )
    world.add_argument(
        "--freeze-encoder-steps",
        type=int,
        default=defaults.freeze_encoder_steps,
        help="keep the encoder fixed for the first N steps",
    )
    world.add_argument(
        "--infonce-weight",
        type=float,
        default=defaults.loss.infonce_weight,
        help="in-batch next-turn contrast (default %(default)s)",
    )
    world.add_argument(
        "--temperature", type=float, default=defaults.loss.temperature, help="InfoNCE temperature (default %(default)s)"
    )
    world.add_argument(
        "--encoder-lr-scale",
        type=float,
        default=defaults.encoder_lr_scale,
        help="learning-rate multiplier for the encoder (default %(default)s)",
    )
    world.add_argument(
        "--reply-contrast-weight",
        type=float,
        default=defaults.loss.reply_contrast_weight,
        help="InfoNCE against the online encoder's latent of the next turn (default %(default)s)",
    )
    t.set_defaults(run=run_train_world)

    e = subparsers.add_parser(
        "eval-world",
        help="evaluate a world model beside the copy and mean baselines",
        description=(
            "transition_cos, transition_l2 and next-turn retrieval R@1, R@5, MRR (each context's prediction ranked "
            "against the batch's true next turns, in file order, fixed batch size), beside the copy-the-context and "
            "mean-next-latent baselines computed on the same batches."
        ),
    )
    e.add_argument("model", metavar="MODEL", help="model_world_*.safetensors")
    e.add_argument(
        "data", metavar="DATA", nargs="?", default=None, help="pair file or hub:<id> (default: the training data)"
    )
    add_eval_args(e)
    add_checked_shape_args(e, with_bridge=True)
    e.set_defaults(run=run_eval_world)

    i = subparsers.add_parser(
        "infer",
        help="answer a prompt: encode -> transition(reply) -> bridge -> decoder",
        description="Run the agent once on a prompt and print the model, action, conditioning ablation and output.",
    )
    i.add_argument("model", metavar="MODEL", help="model_world_*.safetensors")
    i.add_argument("prompt", metavar="PROMPT", help="the user's message")
    i.add_argument("--vocab", default=None, help="tokenizer.json or vocab file; must be the model's own")
    i.add_argument("--decoder", default="retrieval", help="retrieval (default, offline), transformers or llamacpp")
    i.add_argument("--bridge", default=None, help="a trained prefix bridge for an LLM decoder")
    i.add_argument("--decoder-model", default=None, help="LLM for the transformers/llamacpp decoders")
    i.add_argument("--ablate-conditioning", action="store_true", help="zero the conditioning vector")
    i.add_argument(
        "--max-new-tokens", type=int, default=InferConfig.max_new_tokens, help="reply length cap (default %(default)s)"
    )
    i.add_argument("--top-k", type=int, default=1, help="also show the k best alternatives (retrieval)")
    i.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"sampling temperature, 0 = greedy (LLM decoders; default JEPA_DECODER_TEMP or {InferConfig.temperature})",
    )
    i.add_argument("--device", default="auto", help="auto, cpu or cuda")
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    add_checked_shape_args(i, with_bridge=True)
    i.set_defaults(run=run_infer)


def run_train_world(args: argparse.Namespace) -> int:
    from textjepa.checkpoint import pick_model_file
    from textjepa.objectives.regularizers import RegularizerConfig
    from textjepa.objectives.world_loss import WorldLossConfig
    from textjepa.train.world import train_world

    defaults = WorldConfig()
    cfg = WorldConfig(
        data=data_config(args, args.data, defaults.data),
        model=defaults.model,
        train=train_config(args, defaults.train),
        init_encoder=pick_model_file(args.init_encoder) if args.init_encoder else None,
        freeze_encoder_steps=args.freeze_encoder_steps,
        encoder_lr_scale=args.encoder_lr_scale,
        loss=WorldLossConfig(
            infonce_weight=args.infonce_weight,
            temperature=args.temperature,
            reply_contrast_weight=args.reply_contrast_weight,
            regularization=RegularizerConfig(regularizer=args.regularizer),
        ),
    )
    overrides = {name: getattr(args, name) for name in ("dim", "max_seq", "layers", "heads", "max_vocab", "bridge_dim")}
    train_world(cfg, overrides)
    return 0


def run_eval_world(args: argparse.Namespace) -> int:
    from textjepa.eval.world import evaluate_world

    evaluate_world(eval_config(args))
    return 0


def run_infer(args: argparse.Namespace) -> int:
    from textjepa.agent import Agent
    from textjepa.errors import TextJepaError
    from textjepa.runtime import configure_threads, resolve_device

    if not args.prompt.strip():
        raise TextJepaError("the prompt is empty")
    if args.max_new_tokens < 1:
        raise TextJepaError("--max-new-tokens must be at least 1")
    configure_threads()
    agent = Agent.load(
        args.model,
        decoder=args.decoder,
        device=resolve_device(args.device),
        vocab=args.vocab,
        shape_overrides=shape_overrides(args),
        bridge=args.bridge,
        decoder_model=args.decoder_model,
    )
    reply = agent.respond(
        args.prompt,
        ablate=args.ablate_conditioning,
        max_new_tokens=args.max_new_tokens,
        top_k=args.top_k,
        temperature=args.temperature,
    )
    result = {
        "model": agent.model_name,
        "action": "reply",
        "conditioning_ablation": args.ablate_conditioning,
        "decoder": args.decoder,
        "output": reply.generation.text,
        "notes": reply.notes,
    }
    if args.top_k > 1:
        result["alternatives"] = [{"text": text, "score": score} for text, score in reply.generation.alternatives]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model: {result['model']}")
    print("action: reply")
    print(f"conditioning_ablation: {str(args.ablate_conditioning).lower()}")
    for note in reply.notes:
        print(f"note: {note}")
    print(f"output: {result['output']}")
    for rank, alternative in enumerate(result.get("alternatives", [])[1:], start=2):
        print(f"  #{rank} ({alternative['score']:.3f}): {alternative['text']}")
    return 0
