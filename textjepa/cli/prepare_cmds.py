"""`prepare hub|ultrachat|expert|jsonl|mix|demo`: fetch hub datasets, write training files (a record a line)."""

from __future__ import annotations

import argparse

from textjepa.cli.common import add_command
from textjepa.config import (
    PrepareDemoConfig,
    PrepareExpertConfig,
    PrepareHubConfig,
    PrepareJsonlConfig,
    PrepareMixConfig,
    PrepareUltrachatConfig,
)
from textjepa.data.pairs import EXPERT_SOURCES
from textjepa.errors import TextJepaError
from textjepa.settings import Settings


def _no_kind(cfg: None, args: argparse.Namespace, settings: Settings) -> int:
    raise TextJepaError("prepare needs a kind: ultrachat, expert, jsonl or mix (see: textjepa prepare --help)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="write training files from hub datasets, JSONL shards or other line files",
        description=(
            "Write line files for training: context<TAB>next_turn pairs from Hugging Face datasets "
            "(ultrachat, expert) or JSON Lines shards (jsonl), or a mix of existing files (mix). "
            "Fields are cleaned so that each line is one record: tabs become spaces, newlines the "
            "two characters \\n. Outputs are written to a temporary file and renamed when complete."
        ),
    )
    p.set_defaults(run=_no_kind)
    kinds = p.add_subparsers(dest="prepare_kind", metavar="KIND", parser_class=type(p))
    add_command(
        kinds,
        "hub",
        PrepareHubConfig(),
        run_hub,
        help="download and cache a hub:<dataset_id> now (what latent/train-world would do)",
        description=(
            "Resolve a hub dataset as a training command would: download it once through huggingface_hub "
            "and convert it to a line file under --data-dir, or reuse that file when it is there. Prints "
            "the path. Useful before a run that must not wait for the download."
        ),
    )
    add_command(
        kinds,
        "ultrachat",
        PrepareUltrachatConfig(),
        run_ultrachat,
        help="HuggingFaceH4/ultrachat_200k -> context<TAB>next_turn",
        description=(
            "For each assistant turn of HuggingFaceH4/ultrachat_200k: context = up to N previous turns as "
            "`User: ...` / `Assistant: ...` (joined with \\n), next_turn = the assistant turn. "
            "Seed form: textjepa --prepare-ultrachat [output] [context_window] [min_tokens] [max_rows]."
        ),
    )
    add_command(
        kinds,
        "expert",
        PrepareExpertConfig(),
        run_expert,
        help="a Q&A dataset (SciQ, SQuAD v2, Natural Questions, Stack Exchange) -> context<TAB>answer",
        description=(
            "sciq: `User: <question>\\nContext: <support>` -> answer (allenai/sciq). "
            "squad: `User: <question>\\nContext: <paragraph>` -> first answer, unanswerable skipped "
            "(rajpurkar/squad_v2). natural_questions: `User: <question>` -> short answer, else the long "
            "answer's text (google-research-datasets/natural_questions). stackexchange: `User: <question>` "
            "-> highest-scored answer, HTML stripped (HuggingFaceH4/stack-exchange-preferences)."
        ),
        tweaks={"dataset": {"choices": tuple(EXPERT_SOURCES)}},
    )
    add_command(
        kinds,
        "jsonl",
        PrepareJsonlConfig(),
        run_jsonl,
        help="JSON Lines shards with context/response keys -> context<TAB>response",
        description=(
            'Every *.jsonl / *.json file under --input-dir, one JSON object per line with "context" '
            'and "response" keys. Bad JSON, missing keys and responses outside the word bounds are '
            "skipped and counted."
        ),
    )
    add_command(
        kinds,
        "mix",
        PrepareMixConfig(),
        run_mix,
        help="concatenate line files, optionally shuffled",
        description=(
            "Concatenate line files (e.g. chat and expert pairs, so the conditioning reflects both styles). "
            "--shuffle shuffles deterministically for --seed while streaming: lines are scattered into "
            "temporary bucket files, each shuffled in memory, so files larger than memory work."
        ),
    )
    add_command(
        kinds,
        "demo",
        PrepareDemoConfig(),
        run_demo_corpus,
        help="the embedded default corpus from the local Python standard library",
        description=(
            "Write stdlib_paragraphs.txt (docstring paragraphs, one per line, for latent) and stdlib_pairs.txt "
            "(`User: What does `name(signature)` do?<TAB>first docstring paragraph`, for train-world) from the "
            "installed Python standard library. No downloads; nothing is imported."
        ),
    )


def run_demo_corpus(cfg: PrepareDemoConfig, args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from textjepa.data.local_corpus import build_demo_corpus

    try:
        corpus = build_demo_corpus(Path(cfg.out_dir))
    except OSError as exc:
        raise TextJepaError(f"cannot write to {cfg.out_dir}: {exc.strerror}") from exc
    print(f"wrote {corpus.paragraphs} paragraphs to {corpus.paragraphs_path}")
    print(f"wrote {corpus.pairs} question -> answer pairs to {corpus.pairs_path}")
    return 0


def run_hub(cfg: PrepareHubConfig, args: argparse.Namespace, settings: Settings) -> int:
    from textjepa.data.sources import HUB_PREFIX, resolve_data

    dataset = cfg.dataset if cfg.dataset.startswith(HUB_PREFIX) else HUB_PREFIX + cfg.dataset
    print(resolve_data(dataset, cfg.data_dir, cfg.mode, settings))
    return 0


# Each config is checked before its module is imported: a bad option is reported without importing the data stack.


def run_ultrachat(cfg: PrepareUltrachatConfig, args: argparse.Namespace, settings: Settings) -> int:
    cfg.validate()
    from textjepa.data.prepare import prepare_ultrachat

    prepare_ultrachat(cfg, settings)
    return 0


def run_expert(cfg: PrepareExpertConfig, args: argparse.Namespace, settings: Settings) -> int:
    cfg.validate()
    from textjepa.data.prepare import prepare_expert

    prepare_expert(cfg, settings)
    return 0


def run_jsonl(cfg: PrepareJsonlConfig, args: argparse.Namespace, settings: Settings) -> int:
    cfg.validate()
    from textjepa.data.prepare import prepare_jsonl

    prepare_jsonl(cfg)
    return 0


def run_mix(cfg: PrepareMixConfig, args: argparse.Namespace, settings: Settings) -> int:
    cfg.validate()
    from textjepa.data.prepare import prepare_mix

    prepare_mix(cfg)
    return 0
