"""From a data argument (a path or `hub:<dataset_id>`) to a local line file and its tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from tokenizers import Tokenizer

from textjepa.data.configs import DataConfig
from textjepa.data.contract import DataContract, Field
from textjepa.data.lines import LineStats, iter_latent_texts, iter_world_pairs, require_usable
from textjepa.data.tokens import (
    TokenStore,
    build_or_open_token_store,
    file_hash,
    tokenizer_from_string,
    train_tokenizer,
)
from textjepa.errors import TextJepaError
from textjepa.io import RunKind, atomic_write_text, ensure_writable_dir
from textjepa.settings import Settings

HUB_PREFIX = "hub:"


def resolve_data(argument: str, data_dir: str, mode: RunKind, settings: Settings | None = None) -> Path:
    """A local line file for `argument`; `hub:<id>` is downloaded once and cached under data_dir (`settings`: the
    environment the hub download reads, data/hub.py)."""
    # Token caches (and hub downloads) go to data_dir: a file or a read-only folder there is one clear error
    # now, not a traceback after the data was read.
    ensure_writable_dir(Path(data_dir), "data directory (--data-dir)")
    if argument.startswith(HUB_PREFIX):
        from textjepa.data.hub import cached_hub_lines

        return cached_hub_lines(argument[len(HUB_PREFIX) :], Path(data_dir), mode, settings)
    path = Path(argument)
    if not path.exists():
        raise TextJepaError(f"data file not found: {argument}")
    if not path.is_file():
        raise TextJepaError(f"data path is not a file: {argument}")
    return path


def recorded_data(
    given: str | None, contract: DataContract, kind: RunKind, data_dir: str, settings: Settings | None = None
) -> tuple[Path, DataConfig]:
    """The data an evaluation reads: the one given, else the model's own training data, read under the model's
    data contract (so its validation split is the same)."""
    argument = given or contract.source
    if not argument:
        raise TextJepaError("no data given and the checkpoint does not record its training data")
    if not given and not argument.startswith(HUB_PREFIX) and not Path(argument).is_file():
        # Checkpoints from before absolute paths were recorded hold the path as typed at training time.
        relative = "" if Path(argument).is_absolute() else " (recorded relative to the folder training ran in)"
        raise TextJepaError(
            f"the training data recorded in the checkpoint, {argument}{relative}, is not there any more (moved or "
            "deleted); give the data file as DATA"
        )
    path = resolve_data(argument, data_dir, kind, settings)
    return path, contract.data_config(str(path), data_dir)


@dataclass
class Records:
    """How one kind of stage reads a line file."""

    kind: RunKind
    fields: tuple[Field, ...]
    with_actions: bool
    reader: Callable[[Path, int, LineStats], Iterator[tuple]]
    what: str


def _latent_records(path: Path, max_line_bytes: int, stats: LineStats) -> Iterator[tuple]:
    return ((text,) for text in iter_latent_texts(path, max_line_bytes, stats))


def _world_records(path: Path, max_line_bytes: int, stats: LineStats) -> Iterator[tuple]:
    return ((p.context, p.next_turn, p.action) for p in iter_world_pairs(path, max_line_bytes, stats))


LATENT_RECORDS = Records(RunKind.LATENT, (Field.TEXT,), False, _latent_records, "text lines")
WORLD_RECORDS = Records(RunKind.WORLD, (Field.CONTEXT, Field.REPLY), True, _world_records, "context/next_turn pairs")


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
