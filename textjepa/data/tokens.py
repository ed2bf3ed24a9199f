"""Token ids: the byte-level BPE tokenizer and the memory-mapped token store.

A corpus is tokenised once per (corpus hash, tokenizer hash, reading rules); the ids live in flat
memory-mapped files so that memory does not grow with the corpus.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from textjepa.data.contract import Field, keep_tokens, token_ids
from textjepa.data.lines import LineStats
from textjepa.data.vocab import MIN_VOCAB, SPECIAL_TOKENS
from textjepa.errors import TextJepaError
from textjepa.io import atomic_directory, atomic_write_text

# Records longer than this are cut when stored (by the data contract's rule: a context keeps its end);
# batches cut further to max_seq.
MAX_STORED_TOKENS = 2048
_ENCODE_CHUNK = 2048
# Chunks between two malloc_trim calls (see release_freed_memory). After every chunk the trims and the page faults
# of the memory they handed back cost a tenth of the build (bench/data_throughput.py: lines -> ids 0.77-0.79 of raw
# encode_batch_fast, 0.80-0.86 trimming every 8th); peak RSS stays flat: 10x corpus / 1x 1.005 (1.004 before).
_TRIM_EVERY = 8
# 2: a context longer than MAX_STORED_TOKENS is stored with its last tokens (1 kept its first).
_STORE_VERSION = 2


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    if vocab_size < MIN_VOCAB:
        raise TextJepaError(
            f"max_vocab {vocab_size} is too small: the special tokens {', '.join(SPECIAL_TOKENS)} "
            f"and 256 byte symbols need at least {MIN_VOCAB}"
        )
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected_id:
            raise AssertionError(f"special token {token} did not get id {expected_id}")
    return tokenizer


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()[:16]


def tokenizer_from_string(text: str) -> Tokenizer:
    return Tokenizer.from_str(text)


def write_vocab_txt(tokenizer: Tokenizer, path: Path) -> None:
    """The seed's vocab file: one token per line, line number = id."""
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    atomic_write_text(path, "\n".join(tokens) + "\n")


def check_vocab_argument(path: str, tokenizer: Tokenizer) -> None:
    """The seed form passes <vocab|tokenizer> beside the model; it must be the model's own."""
    file = Path(path)
    if not file.is_file():
        raise TextJepaError(f"vocab/tokenizer file not found: {path}")
    text = file.read_text(encoding="utf-8", errors="replace")
    if file.suffix == ".json":
        try:
            other = Tokenizer.from_str(text)
        except Exception as exc:  # the tokenizers library raises its own exception types
            raise TextJepaError(f"{path} is not a tokenizer.json file") from exc
        if tokenizer_hash(other) != tokenizer_hash(tokenizer):
            raise TextJepaError(f"tokenizer {path} is not the one this model was trained with")
        return
    ours = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    if text.splitlines() != ours:
        raise TextJepaError(f"vocab file {path} does not match the model's tokenizer")


def file_hash(path: str | Path) -> str:
    digest = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- token store


@dataclass
class TokenField:
    """One text field of every record: flat ids plus offsets (record i is ids[off[i]:off[i+1]])."""

    ids: np.ndarray
    offsets: np.ndarray

    def lengths(self, index: np.ndarray) -> np.ndarray:
        return self.offsets[index + 1] - self.offsets[index]

    def record(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


@dataclass
class TokenStore:
    """Memory-mapped token ids of a corpus, one or more fields per record (and action ids)."""

    fields: dict[str, TokenField]
    actions: np.ndarray | None
    action_names: list[str]
    stats: LineStats
    corpus_hash: str
    path: Path

    def __len__(self) -> int:
        first = next(iter(self.fields.values()))
        return len(first.offsets) - 1

    @property
    def total_tokens(self) -> int:
        return int(sum(int(f.offsets[-1]) for f in self.fields.values()))


def _store_dir(cache_root: Path, corpus_hash: str, tok_hash: str, kind: str, min_tokens: int, cap: int) -> Path:
    return cache_root / "tokens" / f"{kind}_{corpus_hash}_{tok_hash}_m{min_tokens}_c{cap}_v{_STORE_VERSION}"


def open_token_store(directory: Path) -> TokenStore:
    meta = json.loads((directory / "meta.json").read_text())
    fields = {}
    for name in meta["fields"]:
        ids = (
            np.memmap(directory / f"{name}.ids.bin", dtype=np.uint32, mode="r")
            if meta["tokens"][name]
            else (np.zeros(0, dtype=np.uint32))
        )
        offsets = np.memmap(directory / f"{name}.offsets.bin", dtype=np.int64, mode="r")
        fields[name] = TokenField(ids=ids, offsets=offsets)
    actions = None
    if meta.get("has_actions"):
        actions = np.memmap(directory / "actions.bin", dtype=np.int16, mode="r")
    return TokenStore(
        fields=fields,
        actions=actions,
        action_names=meta.get("action_names", []),
        stats=LineStats.from_dict(meta["stats"]),
        corpus_hash=meta["corpus_hash"],
        path=directory,
    )


def build_or_open_token_store(
    records: Iterator[tuple],
    field_names: Sequence[str],
    tokenizer: Tokenizer,
    corpus_hash: str,
    cache_root: str | Path,
    kind: str,
    min_tokens: int,
    stats: LineStats,
    max_line_bytes: int,
    with_actions: bool = False,
    progress: bool = False,
) -> TokenStore:
    """Tokenise `records` (tuples of texts, plus an action name last when with_actions) once.

    The cache is keyed by the corpus content and the tokenizer, so a changed file or tokenizer is
    tokenised anew and an unchanged one is reused. The store is built in a temporary directory and
    renamed only when complete: an interrupted build is never trusted.
    """
    target = _store_dir(Path(cache_root), corpus_hash, tokenizer_hash(tokenizer), kind, min_tokens, max_line_bytes)
    if (target / "meta.json").exists():
        return open_token_store(target)
    with atomic_directory(target) as tmp:
        positions, action_names = _write_store_files(
            tmp, records, field_names, tokenizer, min_tokens, stats, with_actions, progress
        )
        meta = {
            "fields": list(field_names),
            "tokens": positions,
            "stats": stats.to_dict(),
            "corpus_hash": corpus_hash,
            "has_actions": with_actions,
            "action_names": action_names,
            "version": _STORE_VERSION,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        if stats.used == 0:
            shutil.rmtree(tmp)  # nothing worth keeping
            return TokenStore({}, None, [], stats, corpus_hash, target)
    return open_token_store(target)


def _write_store_files(
    directory: Path,
    records: Iterator[tuple],
    field_names: Sequence[str],
    tokenizer: Tokenizer,
    min_tokens: int,
    stats: LineStats,
    with_actions: bool,
    progress: bool,
) -> tuple[dict[str, int], list[str]]:
    """Each field's flat ids and offsets (and the action ids) of the usable records; returns the token count of
    each field and the action names in order of first appearance."""
    handles = {
        name: (open(directory / f"{name}.ids.bin", "wb"), open(directory / f"{name}.offsets.bin", "wb"))
        for name in field_names
    }
    action_handle = open(directory / "actions.bin", "wb") if with_actions else None
    action_names: list[str] = []
    positions = dict.fromkeys(field_names, 0)
    for _, offsets_handle in handles.values():
        offsets_handle.write(np.zeros(1, dtype=np.int64).tobytes())
    bar = _progress_bar(progress, "tokenising")
    try:
        for index, (chunk, encoded, keep) in enumerate(
            _encoded_chunks(records, len(field_names), tokenizer, min_tokens)
        ):
            kept = sum(keep)
            stats.skip("too few tokens", len(chunk) - kept)
            stats.used += kept
            for j, name in enumerate(field_names):
                role = Field(name)
                rows = [keep_tokens(encoded[j][r], role, MAX_STORED_TOKENS) for r in range(len(chunk)) if keep[r]]
                lengths = [len(row) for row in rows]
                # chain walks the rows in C: a generator over every token was a seventh of the store's build time.
                flat = np.fromiter(chain.from_iterable(rows), dtype=np.uint32, count=sum(lengths))
                ends = positions[name] + np.cumsum(lengths, dtype=np.int64)
                positions[name] = int(ends[-1]) if len(ends) else positions[name]
                handles[name][0].write(flat.tobytes())
                handles[name][1].write(ends.astype(np.int64).tobytes())
            if action_handle is not None:
                ids = []
                for r, row in enumerate(chunk):
                    if keep[r]:
                        if row[-1] not in action_names:
                            action_names.append(row[-1])
                        ids.append(action_names.index(row[-1]))
                action_handle.write(np.asarray(ids, dtype=np.int16).tobytes())
            if index % _TRIM_EVERY == _TRIM_EVERY - 1:
                release_freed_memory()
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:  # first: an error said next starts on a line of its own
            bar.close()
        for ids_handle, offsets_handle in handles.values():
            ids_handle.close()  # flushes: on a full disk, the error goes up (the temporary folder is removed)
            offsets_handle.close()
        if action_handle is not None:
            action_handle.close()
    return positions, action_names


def _encoded_chunks(
    records: Iterator[tuple], field_count: int, tokenizer: Tokenizer, min_tokens: int
) -> Iterator[tuple[list[tuple], list[list[list[int]]], list[bool]]]:
    """Records in chunks, with each field's token ids and whether the record is kept: the one rule by which a
    record enters the token store (every field at least `min_tokens` tokens)."""
    while chunk := list(islice(records, _ENCODE_CHUNK)):
        encoded = [token_ids(tokenizer, [row[j] for row in chunk]) for j in range(field_count)]
        keep = [all(len(encoded[j][r]) >= min_tokens for j in range(field_count)) for r in range(len(chunk))]
        yield chunk, encoded, keep


def stored_record_texts(
    records: Iterator[tuple], field_names: Sequence[str], field: str, tokenizer: Tokenizer, min_tokens: int
) -> list[str]:
    """The original text of `field` of every record the token store keeps, in store order (record i of the store
    is the i-th kept record of its file). A tokenizer that does not decode to the text it read (an uncased
    WordPiece lowercases and splits punctuation) cannot give it back from the ids; the file can."""
    column = list(field_names).index(field)
    return [
        row[column]
        for chunk, _, keep in _encoded_chunks(records, len(field_names), tokenizer, min_tokens)
        for row, kept in zip(chunk, keep)
        if kept
    ]


def release_freed_memory() -> None:
    """Give the heap memory freed so far back to the OS (glibc's malloc_trim; elsewhere nothing happens).

    tokenizers encodes on several threads, each with its own malloc arena; the memory a chunk's encodings
    freed stays in those arenas, fragmented, and the process's footprint creeps up with the corpus. Measured
    streaming 100 MB of lines through encode_batch_fast in 2048-line chunks: peak RSS 83.4 MB without, 80.4 MB
    with a trim after every chunk, and flat from 25% of the lines to all of them (80.1 -> 80.4 MB).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return
    trim(0)


def _progress_bar(enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(desc=desc, unit=" lines", mininterval=1.0)
