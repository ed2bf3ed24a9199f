"""The `prepare` commands: context<TAB>next_turn files from hub datasets, JSONL shards, or other files.

Every output is written through writer.AtomicLineFile (temporary file, renamed when complete and
non-empty), every field is cleaned the same way (newlines -> the two characters `\\n`, tabs ->
spaces), so one output line is exactly one record. Each command shows a tqdm bar and ends with
`wrote N lines, skipped M (reasons) -> FILE`.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
from pathlib import Path

from textjepa.data.configs import PrepareExpertConfig, PrepareJsonlConfig, PrepareMixConfig, PrepareUltrachatConfig
from textjepa.data.hub import dataset_parquet_files, iter_rows, progress_bar
from textjepa.data.lines import LineStats, iter_decoded_lines
from textjepa.data.pairs import EXPERT_SOURCES, ULTRACHAT, PairOptions, PairSource, convert_rows, word_count
from textjepa.data.writer import AtomicLineFile
from textjepa.errors import TextJepaError
from textjepa.settings import Settings

JSONL_SUFFIXES = (".jsonl", ".json")
# Beyond this many buckets the shuffle lets buckets grow instead of opening more files at once.
MAX_SHUFFLE_BUCKETS = 256


def report(stats: LineStats, output: str | Path) -> None:
    print(f"{stats.summary(verb='wrote')} -> {output}")


def write_hub_pairs(
    source: PairSource,
    options: PairOptions,
    output: str | Path,
    split: str | None,
    max_rows: int | None,
    progress: bool,
    settings: Settings | None = None,
) -> LineStats:
    """Stream a hub dataset's rows through its converter into `output`."""
    stats = LineStats()
    with AtomicLineFile(output) as writer:  # first, so an unwritable output fails before any download
        files = dataset_parquet_files(source.repo_id, source.config, split or source.split)
        print(f"{source.repo_id} ({files.config}/{files.split}): {len(files.paths)} parquet file(s)")
        bar = progress_bar(source.name, progress)
        try:
            rows = iter_rows(files, source.columns, max_rows, bar, settings)
            for context, reply in convert_rows(rows, source, options, stats):
                writer.write_record((context, reply), stats)
        finally:
            bar.close()
        writer.commit(f"pairs from {source.repo_id} ({stats.summary()})")
    report(stats, output)
    return stats


def prepare_ultrachat(cfg: PrepareUltrachatConfig, settings: Settings | None = None) -> LineStats:
    cfg.validate()
    options = PairOptions(
        context_window=cfg.context_window, min_context_words=cfg.min_tokens, min_reply_words=cfg.min_tokens
    )
    return write_hub_pairs(ULTRACHAT, options, cfg.output, cfg.split, cfg.max_rows, cfg.progress, settings)


def prepare_expert(cfg: PrepareExpertConfig, settings: Settings | None = None) -> LineStats:
    cfg.validate()
    source = EXPERT_SOURCES.get(cfg.dataset)
    if source is None:
        raise TextJepaError(f"unknown expert dataset {cfg.dataset!r} (choose from {', '.join(EXPERT_SOURCES)})")
    options = PairOptions(no_support=cfg.no_support, min_reply_words=cfg.min_answer_words)
    return write_hub_pairs(source, options, cfg.output_path, cfg.split, cfg.max_rows, cfg.progress, settings)


# ---------------------------------------------------------------- JSONL shards

_JSONL_HELP = (
    'put JSON Lines shards there (*.jsonl or *.json), one object per line with "context" and "response" '
    'keys, e.g. {"context": "User: What is a prime?", "response": "A number with exactly two divisors."}'
)


def jsonl_shards(input_dir: str | Path) -> list[Path]:
    root = Path(input_dir)
    if not root.exists():
        raise TextJepaError(f"input directory not found: {root}; {_JSONL_HELP}")
    if not root.is_dir():
        raise TextJepaError(f"--input-dir must be a directory, got the file {root}; {_JSONL_HELP}")
    shards = sorted(p for p in root.rglob("*") if p.suffix.lower() in JSONL_SUFFIXES and p.is_file())
    if not shards:
        raise TextJepaError(f"no *.jsonl or *.json files in {root}; {_JSONL_HELP}")
    return shards


def jsonl_pair(line: str, cfg: PrepareJsonlConfig, stats: LineStats) -> tuple[str, str] | None:
    """(context, response) of one JSON line, or None with the reason counted."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's parser goes
        stats.skip("bad json")
        return None
    if not isinstance(record, dict):
        stats.skip("not a json object")
        return None
    context, response = record.get("context"), record.get("response")
    if context is None or response is None:
        stats.skip("missing context or response")
        return None
    if not isinstance(context, str) or not isinstance(response, str):
        stats.skip("context or response not text")
        return None
    words = word_count(response)
    if words < max(1, cfg.min_tokens) or not context.strip():
        stats.skip("too few tokens")
        return None
    if words > cfg.max_tokens:
        stats.skip("too many tokens")
        return None
    return context, response


def prepare_jsonl(cfg: PrepareJsonlConfig) -> LineStats:
    cfg.validate()
    shards = jsonl_shards(cfg.input_dir)
    stats = LineStats()
    with AtomicLineFile(cfg.output) as writer:
        bar = progress_bar(f"{len(shards)} shard(s)", cfg.progress)
        try:
            for shard in shards:
                for line in iter_decoded_lines(shard, cfg.max_line_bytes, stats):
                    bar.update(1)
                    pair = jsonl_pair(line, cfg, stats)
                    if pair is not None:
                        writer.write_record(pair, stats)
        finally:
            bar.close()
        writer.commit(f"context/response pairs in {cfg.input_dir} ({stats.summary()})")
    report(stats, cfg.output)
    return stats


# ---------------------------------------------------------------- mix


def _check_inputs(inputs: list[str]) -> list[Path]:
    paths = [Path(p) for p in inputs]
    for path in paths:
        if not path.is_file():
            raise TextJepaError(f"input file not found: {path}" if not path.exists() else f"not a file: {path}")
    return paths


def prepare_mix(cfg: PrepareMixConfig) -> LineStats:
    """Concatenate (optionally shuffle) line files, streaming.

    Shuffling files larger than memory: each line goes to one of K temporary bucket files chosen by
    a seeded RNG (K = total bytes / bucket_bytes, capped), then each bucket is read back, shuffled in
    memory with the same RNG, and appended. Scattering uniformly then shuffling each bucket
    uniformly is a uniform permutation (the Rao-Sandelius shuffle), and the same seed and inputs give
    the same output. Memory holds one bucket; disk holds one extra copy of the data.
    """
    cfg.validate()
    inputs = _check_inputs(cfg.inputs)
    stats = LineStats()
    with AtomicLineFile(cfg.output) as writer:
        bar = progress_bar("mix", cfg.progress)
        try:
            lines = (line for path in inputs for line in iter_decoded_lines(path, cfg.max_line_bytes, stats))
            if not cfg.shuffle:
                for line in lines:
                    writer.write_clean_line(line)
                    stats.used += 1
                    bar.update(1)
            else:
                _shuffled_into(writer, lines, inputs, cfg, stats, bar)
        finally:
            bar.close()
        writer.commit(f"lines in {', '.join(map(str, inputs))} ({stats.summary()})")
    report(stats, cfg.output)
    return stats


def _shuffled_into(writer: AtomicLineFile, lines, inputs: list[Path], cfg: PrepareMixConfig, stats, bar) -> None:
    total = sum(p.stat().st_size for p in inputs)
    count = max(1, min(MAX_SHUFFLE_BUCKETS, math.ceil(total / cfg.bucket_bytes)))
    rng = random.Random(cfg.seed)
    # Buckets beside the output: same disk as the result, which must hold the data anyway.
    with tempfile.TemporaryDirectory(prefix=".mix-buckets-", dir=writer.path.parent) as tmp:
        paths = [Path(tmp) / f"{i}.txt" for i in range(count)]
        handles = [p.open("w", encoding="utf-8", newline="\n") for p in paths]
        try:
            for line in lines:
                handles[rng.randrange(count)].write(line + "\n")
                bar.update(1)
        finally:
            for handle in handles:
                handle.close()
        for path in paths:
            # split("\n"), not splitlines(): a record may hold other Unicode line separators.
            bucket = path.read_text(encoding="utf-8").split("\n")[:-1]
            path.unlink()
            rng.shuffle(bucket)
            writer.write_clean_block(bucket)
            stats.used += len(bucket)
