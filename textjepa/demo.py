"""The embedded default, end to end with no downloads: corpus -> JEPA encoder -> world model -> answers."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from textjepa.agent import Agent
from textjepa.config import (
    DEMO_TRAIN_FIELDS,
    PRETRAINED_RECIPES,
    TRAINED_SHAPE,
    DataConfig,
    DemoConfig,
    EvalConfig,
    LatentConfig,
    WorldConfig,
)
from textjepa.data.local_corpus import build_demo_corpus
from textjepa.errors import Interrupted, TextJepaError
from textjepa.eval.jepa import evaluate_jepa
from textjepa.fields import with_values
from textjepa.io import RunKind, own_directory
from textjepa.runtime import choose_precision, resolve_device
from textjepa.settings import Settings
from textjepa.train.checkpointer import earlier_run_files
from textjepa.train.latent import train_latent
from textjepa.train.world import train_world

# The demo has no --resume (it is one command over several runs): what it accepts instead.
START_OVER = "run the demo again with --overwrite to start over, or choose another --out-dir"
# Where the demo's two training runs go, under its --out-dir.
STAGE_DIRS = {RunKind.LATENT: "latent", RunKind.WORLD: "world"}


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def refuse_earlier_demo(cfg: DemoConfig) -> None:
    """A demo into an out-dir holding an earlier demo's runs stops before any work unless --overwrite is given
    (otherwise its first training stage would refuse, naming --resume, which the demo does not have)."""
    if cfg.train.overwrite:
        return
    for kind, stage_dir in STAGE_DIRS.items():
        if existing := earlier_run_files(Path(cfg.out_dir) / stage_dir, kind):
            raise TextJepaError(f"{cfg.out_dir} already holds a demo run ({existing[0]}); {START_OVER}")


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """A stopped training stage's message names what the demo accepts, not the training commands' --resume."""
    try:
        yield
    except Interrupted:
        raise Interrupted(f"the demo stopped during {name}; {START_OVER}") from None


def run_demo(cfg: DemoConfig, settings: Settings | None = None) -> dict:
    """`textjepa demo`, in an out-dir it owns until it ends (no other run writes into it meanwhile)."""
    with own_directory(Path(cfg.out_dir), "demo directory"):
        return _run_demo(cfg, settings)


def _run_demo(cfg: DemoConfig, settings: Settings | None) -> dict:
    started = time.perf_counter()
    refuse_earlier_demo(cfg)
    out = Path(cfg.out_dir)
    data_dir = str(out / "cache")

    _banner("1/5 corpus: docstrings of the installed Python standard library")
    corpus = build_demo_corpus(out / "corpus")
    print(f"{corpus.paragraphs} paragraphs -> {corpus.paragraphs_path}")
    print(f"{corpus.pairs} question -> answer pairs -> {corpus.pairs_path}")

    latent, jepa_report = None, None
    if cfg.latent_steps > 0:
        _banner(f"2/5 JEPA pretraining of the encoder ({cfg.model.backbone})")
        with _stage("JEPA pretraining"):
            latent = train_latent(
                LatentConfig(
                    data=DataConfig(path=str(corpus.paragraphs_path), data_dir=data_dir),
                    model=cfg.model,
                    train=dataclasses.replace(
                        cfg.train, steps=cfg.latent_steps, out_dir=str(out / STAGE_DIRS[RunKind.LATENT])
                    ),
                ),
                settings=settings,
            )

        _banner("3/5 eval-jepa on the held-out paragraphs")
        jepa_report = evaluate_jepa(
            EvalConfig(
                model=str(latent.best_path), data_dir=data_dir, device=cfg.train.device, precision=cfg.train.precision
            ),
            settings,
        )
    else:
        _banner("2/5 and 3/5: no JEPA stage (--latent-steps 0)")

    source = "the encoder from step 2" if latent is not None else f"backbone {cfg.model.backbone}"
    _banner(f"4/5 world model on question -> answer pairs ({source}, {cfg.backbone_mode})")
    # The world model's own training defaults (its faster teacher; on a pretrained backbone train-world's recipe
    # for one), with the demo's shared choices.
    defaults = WorldConfig()
    if not cfg.model.is_scratch:
        defaults = with_values(defaults, PRETRAINED_RECIPES["train-world"])
    shared = {name: getattr(cfg.train, name) for name in DEMO_TRAIN_FIELDS if name != "batch"}
    world_out = str(out / STAGE_DIRS[RunKind.WORLD])
    # Without a JEPA stage the world model is shaped here: the demo's shape (or the backbone's), its pooling.
    model = dataclasses.replace(
        defaults.model, **{name: getattr(cfg.model, name) for name in TRAINED_SHAPE}, transition=cfg.transition
    )
    with _stage("world-model training"):
        world = train_world(
            WorldConfig(
                data=DataConfig(path=str(corpus.pairs_path), data_dir=data_dir, min_tokens=1),
                model=model,
                train=dataclasses.replace(
                    defaults.train, **shared, steps=cfg.world_steps, batch=cfg.world_batch, out_dir=world_out
                ),
                init_encoder=str(latent.best_path) if latent is not None else None,
                backbone_mode=cfg.backbone_mode,
                loss=defaults.loss,
            ),
            settings=settings,
        )
    world_report = world.evaluation  # eval-world's table, printed by train-world at its end

    _banner("5/5 the agent answers (retrieval decoder)")
    device = resolve_device(cfg.train.device)
    precision = choose_precision(cfg.train.precision, device).precision
    agent = Agent.load(world.best_path, device=device, precision=precision)
    answers = []
    for prompt in cfg.prompts:
        reply = agent.respond(prompt)
        answers.append({"prompt": prompt, "output": reply.generation.text, "notes": reply.notes})
        notes = "".join(f"note: {note}\n" for note in reply.notes)  # e.g. that the answer was recalled
        print(f"prompt: {prompt}\naction: reply\n{notes}output: {reply.generation.text}\n")
    print(f"demo finished in {time.perf_counter() - started:.0f} s; artifacts in {out}/")
    print(f'try: textjepa infer {world.best_path} "What does \\`os.path.join\\` do?"')
    return {"jepa": jepa_report, "world": world_report, "answers": answers}
