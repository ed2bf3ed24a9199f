"""`train-world`, `eval-world` and `infer`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from textjepa.cli.common import add_command, add_shape_checks, shape_checks
from textjepa.cli.options import given_options, iter_options
from textjepa.config import EvalConfig, InferConfig, WorldConfig
from textjepa.data.text import checked_text
from textjepa.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    add_command(
        subparsers,
        "train-world",
        WorldConfig(),
        run_train_world,
        help="train the next-turn world model and its conditioning head",
        description=(
            "Learn context -> next_turn transitions from `context<TAB>next_turn` or `context|||next_turn` lines "
            "(an optional third column is the action; default reply). Writes model_world_<size>.safetensors "
            "(+ _teacher), its retrieval index, tokenizer.json, vocab_world.txt, metrics and curves. "
            "With --init-encoder the encoder (and its tokenizer) comes from a latent checkpoint, or encoder, "
            "transition and conditioning head from a world checkpoint (fine-tuning)."
        ),
        backbone_recipe=True,
    )
    evaluate = add_command(
        subparsers,
        "eval-world",
        EvalConfig(),
        run_eval_world,
        help="evaluate a world model beside the copy and mean baselines",
        description=(
            "transition_cos, transition_l2 and next-turn retrieval R@1, R@5, MRR (each context's prediction ranked "
            "against the batch's true next turns, in file order, fixed batch size), beside the copy-the-context and "
            "mean-next-latent baselines computed on the same batches."
        ),
        tweaks={"model": {"help": "model_world_*.safetensors"}},
    )
    add_shape_checks(evaluate, with_cond_head=True)
    infer = add_command(
        subparsers,
        "infer",
        InferConfig(),
        run_infer,
        help="answer a prompt: encode -> transition(reply) -> conditioning head -> decoder",
        description="Run the agent once on a prompt and print the model, action, conditioning ablation and output.",
    )
    add_shape_checks(infer, with_cond_head=True)


def run_train_world(cfg: WorldConfig, args: argparse.Namespace, settings: Settings) -> int:
    cfg.validate()  # before the imports below: a bad option is reported without importing torch
    from textjepa.checkpoint import pick_model_file
    from textjepa.train.world import train_world

    if cfg.init_encoder:  # one or more paths (a glob may also name the _teacher file)
        cfg = dataclasses.replace(cfg, init_encoder=pick_model_file(cfg.init_encoder))
    # The shape options given: with --init-encoder they are checks, else they set the new model's shape.
    shape = given_options(args, (option for option in iter_options(WorldConfig()) if option.dest.startswith("model.")))
    train_world(cfg, shape, settings)
    return 0


def run_eval_world(cfg: EvalConfig, args: argparse.Namespace, settings: Settings) -> int:
    from textjepa.eval.world import evaluate_world

    evaluate_world(dataclasses.replace(cfg, shape_overrides=shape_checks(args)), settings)
    return 0


def run_infer(cfg: InferConfig, args: argparse.Namespace, settings: Settings) -> int:
    cfg = dataclasses.replace(cfg, shape_overrides=shape_checks(args))
    cfg.validate()  # before the imports below: a bad option is reported without importing torch
    checked_text(cfg.prompt, "PROMPT")  # an argument's invalid bytes reach Python as lone surrogates

    from textjepa.agent import Agent
    from textjepa.runtime import choose_precision, configure_threads, resolve_device

    configure_threads(settings)
    device = resolve_device(cfg.device)
    precision = choose_precision(cfg.precision, device, work="serving")
    print(precision.describe(), file=sys.stderr)  # stdout carries the answer (or its JSON) alone
    agent = Agent.load(
        cfg.model,
        decoder=cfg.decoder,
        device=device,
        precision=precision.precision,
        vocab=cfg.vocab,
        shape_overrides=cfg.shape_overrides,
        bridge=cfg.bridge,
        decoder_model=cfg.decoder_model,
        settings=settings,
    )
    reply = agent.respond(
        cfg.prompt,
        ablate=cfg.ablate_conditioning,
        max_new_tokens=cfg.max_new_tokens,
        top_k=cfg.top_k,
        temperature=cfg.temperature,
        recall=not cfg.no_recall,  # the retrieval decoder's; LLM decoders take only their own options
    )
    result = {
        "model": agent.model_name,
        "action": "reply",
        "conditioning_ablation": cfg.ablate_conditioning,
        "decoder": cfg.decoder,
        "output": reply.generation.text,
        "notes": reply.notes,
    }
    if cfg.top_k > 1:
        result["alternatives"] = [{"text": text, "score": score} for text, score in reply.generation.alternatives]
    if cfg.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model: {result['model']}")
    print("action: reply")
    print(f"conditioning_ablation: {str(cfg.ablate_conditioning).lower()}")
    for note in reply.notes:
        print(f"note: {note}")
    print(f"output: {result['output']}")
    for rank, alternative in enumerate(result.get("alternatives", [])[1:], start=2):
        print(f"  #{rank} ({alternative['score']:.3f}): {alternative['text']}")
    return 0
