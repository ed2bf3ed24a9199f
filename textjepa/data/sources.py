"""From a data argument (a path or `hub:<dataset_id>`) to a local line file and its tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from tokenizers import Tokenizer

from textjepa.config import DataConfig
from textjepa.data.lines import LineStats, iter_latent_texts, iter_world_pairs, require_usable
from textjepa.data.tokens import (
    TokenStore,
    atomic_write_text,
    build_or_open_token_store,
    file_hash,
    tokenizer_from_string,
    train_tokenizer,
)
from textjepa.errors import TextJepaError

HUB_PREFIX = "hub:"


def resolve_data(argument: str, data_dir: str, mode: str) -> Path:
    """A local line file for `argument`; `hub:<id>` is downloaded once and cached under data_dir."""
    if argument.startswith(HUB_PREFIX):
        from textjepa.data.hub import cached_hub_lines

        return cached_hub_lines(argument[len(HUB_PREFIX) :], Path(data_dir), mode)
    path = Path(argument)
    if not path.exists():
        raise TextJepaError(f"data file not found: {argument}")
    if not path.is_file():
        raise TextJepaError(f"data path is not a file: {argument}")
    return path


def recorded_data(given: str | None, info: dict, data_dir: str, mode: str) -> tuple[Path, DataConfig]:
    """The data an evaluation reads: the one given, else the checkpoint's own training data, with the
    line rules and held-out fraction the checkpoint recorded (so its validation split is the same)."""
    recorded = info.get("data", {})
    argument = given or recorded.get("path")
    if not argument:
        raise TextJepaError("no data given and the checkpoint does not record its training data")
    path = resolve_data(argument, data_dir, mode)
    defaults = DataConfig()
    return path, DataConfig(
        path=str(path),
        data_dir=data_dir,
        max_line_bytes=recorded.get("max_line_bytes", defaults.max_line_bytes),
        min_tokens=recorded.get("min_tokens", defaults.min_tokens if mode == "latent" else 1),
        val_fraction=recorded.get("val_fraction", defaults.val_fraction),
    )


@dataclass
class Records:
    """How one kind of stage reads a line file."""

    kind: str  # "latent" or "world"
    fields: tuple[str, ...]
    with_actions: bool
    reader: Callable[[Path, int, LineStats], Iterator[tuple]]
    what: str


def _latent_records(path: Path, max_line_bytes: int, stats: LineStats) -> Iterator[tuple]:
    return ((text,) for text in iter_latent_texts(path, max_line_bytes, stats))


def _world_records(path: Path, max_line_bytes: int, stats: LineStats) -> Iterator[tuple]:
    return ((p.context, p.next_turn, p.action) for p in iter_world_pairs(path, max_line_bytes, stats))


LATENT_RECORDS = Records("latent", ("text",), False, _latent_records, "text lines")
WORLD_RECORDS = Records("world", ("context", "next"), True, _world_records, "context/next_turn pairs")


def tokenizer_texts(path: Path, records: Records, data: DataConfig) -> Iterator[str]:
    """Every text field of the first tokenizer_sample_lines records (bounded work and memory)."""
    stats = LineStats()
    for row in islice(records.reader(path, data.max_line_bytes, stats), data.tokenizer_sample_lines):
        yield from row[: len(records.fields)]


def load_or_train_tokenizer(
    path: Path, corpus_hash: str, records: Records, data: DataConfig, vocab_size: int
) -> Tokenizer:
    """Trained once per (corpus, vocab size, reader) and cached, so re-runs and resumes get the same one."""
    cache = (
        Path(data.data_dir)
        / "tokenizers"
        / f"{records.kind}_{corpus_hash}_v{vocab_size}_s{data.tokenizer_sample_lines}.json"
    )
    if cache.is_file():
        return tokenizer_from_string(cache.read_text(encoding="utf-8"))
    tokenizer = train_tokenizer(tokenizer_texts(path, records, data), vocab_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, tokenizer.to_str())
    return tokenizer


def load_corpus(
    path: Path,
    records: Records,
    data: DataConfig,
    tokenizer: Tokenizer | None,
    vocab_size: int,
    progress: bool = False,
) -> tuple[Tokenizer, TokenStore]:
    """Line file -> (tokenizer, memory-mapped token ids), reporting used and skipped lines."""
    corpus_hash = file_hash(path)
    # Reading the file once up front gives a clear error before any tokenizer work on a useless file.
    if tokenizer is None:
        probe = LineStats()
        for _ in islice(records.reader(path, data.max_line_bytes, probe), 1):
            probe.used += 1
        require_usable(probe, path, records.what)
        tokenizer = load_or_train_tokenizer(path, corpus_hash, records, data, vocab_size)
    stats = LineStats()
    store = build_or_open_token_store(
        records.reader(path, data.max_line_bytes, stats),
        records.fields,
        tokenizer,
        corpus_hash,
        Path(data.data_dir),
        records.kind,
        data.min_tokens,
        stats,
        data.max_line_bytes,
        with_actions=records.with_actions,
        progress=progress,
    )
    print(f"{path}: {store.stats.summary()}")
    require_usable(store.stats, path, records.what)
    return tokenizer, store
