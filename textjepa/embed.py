"""`textjepa embed`: the embedding of every line of a file, streamed to .npy or Parquet.

Memory stays flat in the file's size: lines are read, encoded and written a batch at a time. A first pass counts
the usable lines so that the .npy's header can be written first and its rows appended; Parquet is written in
row groups (`pyarrow.parquet.ParquetWriter`). Lines are read as the latent reader reads them (data/lines.py: a
plain line whole, a `left<TAB>right` line its left side; lines that are too long, undecodable or empty are
skipped and counted). The output is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol

import numpy as np

from textjepa.config import EmbedConfig
from textjepa.data.lines import LineStats, iter_latent_texts, require_usable
from textjepa.data.sources import resolve_data
from textjepa.errors import TextJepaError
from textjepa.inference.encoding import TextEncoder, as_array
from textjepa.io import RunKind, atomic_write, ensure_writable_dir, own_output_file, remove_stale_temp_files
from textjepa.settings import Settings

# Rows per Parquet row group: large enough for efficient reading, small enough to keep memory flat.
PARQUET_ROW_GROUP = 1024


class EmbeddingWriter(Protocol):
    buffered_rows_peak: int  # the most rows held in memory at once (flat in the file's size)

    def write(self, texts: list[str], vectors: np.ndarray) -> None: ...

    def close(self) -> None: ...

    def abandon(self) -> None:
        """After an error: let go of the file (its temporary name is removed), raising nothing more."""


class NpyWriter:
    """float32 [rows, dim] in a .npy: its header (the row count is known from the first pass), then each batch's
    rows appended; nothing is buffered. Plain writes, not a memory map: on a full disk a write fails with an
    error, where a store into a memory-mapped page the disk cannot hold kills the process (SIGBUS)."""

    def __init__(self, path: Path, rows: int, dim: int) -> None:
        self.handle = open(path, "wb")  # noqa: SIM115 - closed by close(), or with the temporary file on error
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (rows, dim)}
        np.lib.format.write_array_header_1_0(self.handle, header)
        self.rows, self.written, self.buffered_rows_peak = rows, 0, 0

    def write(self, texts: list[str], vectors: np.ndarray) -> None:
        end = self.written + len(vectors)
        if end > self.rows:
            raise TextJepaError("the data file grew while it was being embedded")
        self.handle.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self.written = end

    def close(self) -> None:
        self.handle.close()

    def abandon(self) -> None:
        with contextlib.suppress(OSError):  # closing flushes, and the disk may still be full
            self.handle.close()


class ParquetWriter:
    """Columns `text` (string) and `embedding` (fixed-size list of float32), a row group every PARQUET_ROW_GROUP."""

    def __init__(self, path: Path, dim: int, row_group: int = PARQUET_ROW_GROUP) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.dim, self.row_group = pa, dim, row_group
        self.schema = pa.schema([("text", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])
        self.writer = pq.ParquetWriter(str(path), self.schema)
        self.texts: list[str] = []
        self.vectors: list[np.ndarray] = []
        self.buffered_rows_peak = 0

    def write(self, texts: list[str], vectors: np.ndarray) -> None:
        self.texts.extend(texts)
        self.vectors.append(np.asarray(vectors, dtype=np.float32))
        self.buffered_rows_peak = max(self.buffered_rows_peak, len(self.texts))
        if len(self.texts) >= self.row_group:
            self._flush()

    def _flush(self) -> None:
        if not self.texts:
            return
        flat = self.pa.array(np.concatenate(self.vectors).reshape(-1), type=self.pa.float32())
        table = self.pa.Table.from_arrays(
            [self.pa.array(self.texts, type=self.pa.string()), self.pa.FixedSizeListArray.from_arrays(flat, self.dim)],
            schema=self.schema,
        )
        self.writer.write_table(table, row_group_size=len(self.texts))
        self.texts, self.vectors = [], []

    def close(self) -> None:
        self._flush()
        self.writer.close()

    def abandon(self) -> None:
        with contextlib.suppress(Exception):  # closing writes the footer, and the disk may still be full
            self.writer.close()


@dataclass
class EmbedReport:
    out: Path
    rows: int
    dim: int
    stats: LineStats
    buffered_rows_peak: int


def _batched(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(texts)
    while batch := list(islice(iterator, size)):
        yield batch


def check_output(out: Path, overwrite: bool) -> None:
    """The output path is usable before any work starts: no silent replacement, a writable directory."""
    if out.is_dir():
        raise TextJepaError(f"--out {out} is a directory, expected a .npy or .parquet file")
    if out.exists() and not overwrite:
        raise TextJepaError(f"{out} exists; pass --overwrite to replace it")
    ensure_writable_dir(out.parent)


def load_encoder(model: str, reply: bool, device: str, precision: str = "auto") -> TextEncoder:
    """The checkpoint's encoder: a world model's context encoder (its teacher with reply), a latent model's."""
    encoder = TextEncoder.load(model, device, teacher=reply, precision=precision)
    if reply and encoder.checkpoint.kind is not RunKind.WORLD:
        raise TextJepaError(f"--reply needs a world checkpoint; {Path(model).name} is a {encoder.checkpoint.kind} one")
    return encoder


def write_embeddings(
    encoder: TextEncoder,
    path: Path,
    out: Path,
    batch_size: int,
    normalize: bool = False,
    progress: bool = False,
    row_group: int = PARQUET_ROW_GROUP,
) -> EmbedReport:
    """Embed every usable line of `path` into `out` (.npy or .parquet), a batch at a time."""
    max_line_bytes = encoder.checkpoint.data.max_line_bytes
    stats = LineStats()
    stats.used = sum(1 for _ in iter_latent_texts(path, max_line_bytes, stats))
    require_usable(stats, path, "text lines")
    from tqdm import tqdm

    remove_stale_temp_files(out.parent)  # left by an embed that crashed
    with atomic_write(out, shared=True) as tmp:
        writer: EmbeddingWriter
        if out.suffix == ".parquet":
            writer = ParquetWriter(tmp, encoder.dim, row_group)
        else:
            writer = NpyWriter(tmp, stats.used, encoder.dim)
        written = 0
        try:
            with tqdm(total=stats.used, desc="embed", unit=" lines", mininterval=0.5, disable=not progress) as bar:
                for texts in _batched(iter_latent_texts(path, max_line_bytes, LineStats()), batch_size):
                    writer.write(texts, as_array(encoder.embed_texts(texts, batch_size).vectors, normalize))
                    written += len(texts)
                    bar.update(len(texts))
            if written != stats.used:  # the output would not match the file: keep nothing
                raise TextJepaError(f"{path} changed while it was being embedded ({stats.used} lines, then {written})")
            writer.close()
        except BaseException:
            writer.abandon()
            raise
    return EmbedReport(out, stats.used, encoder.dim, stats, writer.buffered_rows_peak)


def embed_file(cfg: EmbedConfig, settings: Settings | None = None) -> EmbedReport:
    """`textjepa embed`: check the output, load the encoder, resolve the data, write, report on stderr."""
    cfg.validate()
    out = Path(cfg.out)
    check_output(out, cfg.overwrite)
    with own_output_file(out):  # no second embed writes it meanwhile
        check_output(out, cfg.overwrite)  # one that ended just before us may have written it
        encoder = load_encoder(cfg.model, cfg.reply, cfg.device, cfg.precision)
        path = resolve_data(cfg.data, cfg.data_dir, RunKind.LATENT, settings)
        report = write_embeddings(encoder, path, out, cfg.batch_size, cfg.normalize, cfg.progress)
    what = "replies" if cfg.reply else ("contexts" if encoder.checkpoint.kind is RunKind.WORLD else "texts")
    summary = report.stats.summary("embedded", "lines")
    print(f"{summary} of {path} as {what} -> {out} ({report.dim} dims)", file=sys.stderr)
    return report
