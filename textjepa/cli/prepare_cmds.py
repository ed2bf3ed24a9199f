"""`prepare hub|ultrachat|expert|jsonl|mix`: fetch hub datasets, write training files (a record a line)."""

from __future__ import annotations

import argparse

from textjepa.cli.common import config_from_args
from textjepa.config import (
    DataConfig,
    PrepareExpertConfig,
    PrepareJsonlConfig,
    PrepareMixConfig,
    PrepareUltrachatConfig,
)
from textjepa.data.pairs import EXPERT_SOURCES
from textjepa.errors import TextJepaError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _no_kind(args: argparse.Namespace) -> int:
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

    h = kinds.add_parser(
        "hub",
        help="download and cache a hub:<dataset_id> now (what latent/train-world would do)",
        description=(
            "Resolve a hub dataset as a training command would: download it once through huggingface_hub "
            "and convert it to a line file under --data-dir, or reuse that file when it is there. Prints "
            "the path. Useful before a run that must not wait for the download."
        ),
    )
    h.add_argument("dataset", metavar="DATASET", help="hub:<org>/<name> (or just <org>/<name>)")
    h.add_argument("--mode", choices=("latent", "world"), default="latent", help="what it is for (default %(default)s)")
    h.add_argument("--data-dir", default=DataConfig().data_dir, help="where cache files go (default %(default)s)")
    h.set_defaults(run=run_hub)

    u_defaults = PrepareUltrachatConfig()
    u = kinds.add_parser(
        "ultrachat",
        help="HuggingFaceH4/ultrachat_200k -> context<TAB>next_turn",
        description=(
            "For each assistant turn of HuggingFaceH4/ultrachat_200k: context = up to N previous turns as "
            "`User: ...` / `Assistant: ...` (joined with \\n), next_turn = the assistant turn. "
            "Seed form: textjepa --prepare-ultrachat [output] [context_window] [min_tokens] [max_rows]."
        ),
    )
    u.add_argument("output", metavar="OUTPUT", nargs="?", default=u_defaults.output, help="default %(default)s")
    u.add_argument(
        "--context-window",
        type=int,
        default=u_defaults.context_window,
        help="previous turns kept (default %(default)s)",
    )
    u.add_argument(
        "--min-tokens",
        type=int,
        default=u_defaults.min_tokens,
        help="fewer whitespace words on either side: skipped (default %(default)s)",
    )
    u.add_argument("--max-rows", type=_positive_int, default=None, help="read at most N conversations (default: all)")
    u.add_argument("--split", default=u_defaults.split, help="dataset split (default %(default)s)")
    u.add_argument("--no-progress", action="store_true", help="no progress bar")
    u.set_defaults(run=run_ultrachat)

    e = kinds.add_parser(
        "expert",
        help="a Q&A dataset (SciQ, SQuAD v2, Natural Questions, Stack Exchange) -> context<TAB>answer",
        description=(
            "sciq: `User: <question>\\nContext: <support>` -> answer (allenai/sciq). "
            "squad: `User: <question>\\nContext: <paragraph>` -> first answer, unanswerable skipped "
            "(rajpurkar/squad_v2). natural_questions: `User: <question>` -> short answer, else the long "
            "answer's text (google-research-datasets/natural_questions). stackexchange: `User: <question>` "
            "-> highest-scored answer, HTML stripped (HuggingFaceH4/stack-exchange-preferences)."
        ),
    )
    e.add_argument("--dataset", required=True, choices=tuple(EXPERT_SOURCES), help="which dataset")
    e.add_argument("--output", default=None, help="output file (default data/<dataset>_pairs.txt)")
    e.add_argument("--split", default=None, help="dataset split (default: its training split)")
    e.add_argument("--max-rows", type=_positive_int, default=None, help="read at most N dataset rows (default: all)")
    e.add_argument("--no-support", action="store_true", help="leave out the supporting paragraph (SciQ, SQuAD)")
    e.add_argument("--min-answer-words", type=int, default=1, help="shorter answers are skipped (default %(default)s)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(run=run_expert)

    j_defaults = PrepareJsonlConfig()
    j = kinds.add_parser(
        "jsonl",
        help="JSON Lines shards with context/response keys -> context<TAB>response",
        description=(
            'Every *.jsonl / *.json file under --input-dir, one JSON object per line with "context" '
            'and "response" keys. Bad JSON, missing keys and responses outside the word bounds are '
            "skipped and counted."
        ),
    )
    j.add_argument("--input-dir", "--input_dir", dest="input_dir", required=True, help="folder of shards")
    j.add_argument("--output", default=j_defaults.output, help="default %(default)s")
    j.add_argument(
        "--min-tokens",
        "--min_tokens",
        dest="min_tokens",
        type=int,
        default=j_defaults.min_tokens,
        help="fewest words in a response (default %(default)s)",
    )
    j.add_argument(
        "--max-tokens",
        "--max_tokens",
        dest="max_tokens",
        type=int,
        default=j_defaults.max_tokens,
        help="most words in a response (default %(default)s)",
    )
    j.add_argument("--no-progress", action="store_true", help="no progress bar")
    j.set_defaults(run=run_jsonl)

    m = kinds.add_parser(
        "mix",
        help="concatenate line files, optionally shuffled",
        description=(
            "Concatenate line files (e.g. chat and expert pairs, so the conditioning reflects both styles). "
            "--shuffle shuffles deterministically for --seed while streaming: lines are scattered into "
            "temporary bucket files, each shuffled in memory, so files larger than memory work."
        ),
    )
    m.add_argument("inputs", metavar="INPUT", nargs="+", help="line files")
    m.add_argument("--output", required=True, help="output file")
    m.add_argument("--shuffle", action="store_true", help="shuffle the lines")
    m.add_argument("--seed", type=int, default=0, help="shuffle seed (default %(default)s)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(run=run_mix)

    d = kinds.add_parser(
        "demo",
        help="the embedded default corpus from the local Python standard library",
        description=(
            "Write stdlib_paragraphs.txt (docstring paragraphs, one per line, for latent) and stdlib_pairs.txt "
            "(`User: What does `name(signature)` do?<TAB>first docstring paragraph`, for train-world) from the "
            "installed Python standard library. No downloads; nothing is imported."
        ),
    )
    d.add_argument("--out-dir", default="data/demo", help="where the two files go (default %(default)s)")
    d.set_defaults(run=run_demo_corpus)


def run_demo_corpus(args: argparse.Namespace) -> int:
    from pathlib import Path

    from textjepa.data.local_corpus import build_demo_corpus
    from textjepa.errors import TextJepaError

    try:
        corpus = build_demo_corpus(Path(args.out_dir))
    except OSError as exc:
        raise TextJepaError(f"cannot write to {args.out_dir}: {exc.strerror}") from exc
    print(f"wrote {corpus.paragraphs} paragraphs to {corpus.paragraphs_path}")
    print(f"wrote {corpus.pairs} question -> answer pairs to {corpus.pairs_path}")
    return 0


def run_hub(args: argparse.Namespace) -> int:
    from textjepa.data.sources import HUB_PREFIX, resolve_data

    dataset = args.dataset if args.dataset.startswith(HUB_PREFIX) else HUB_PREFIX + args.dataset
    print(resolve_data(dataset, args.data_dir, args.mode))
    return 0


def run_ultrachat(args: argparse.Namespace) -> int:
    from textjepa.data.prepare import prepare_ultrachat

    prepare_ultrachat(config_from_args(PrepareUltrachatConfig, args))
    return 0


def run_expert(args: argparse.Namespace) -> int:
    from textjepa.data.prepare import prepare_expert

    prepare_expert(config_from_args(PrepareExpertConfig, args))
    return 0


def run_jsonl(args: argparse.Namespace) -> int:
    from textjepa.data.prepare import prepare_jsonl

    prepare_jsonl(config_from_args(PrepareJsonlConfig, args))
    return 0


def run_mix(args: argparse.Namespace) -> int:
    from textjepa.data.prepare import prepare_mix

    prepare_mix(config_from_args(PrepareMixConfig, args, inputs=list(args.inputs)))
    return 0
