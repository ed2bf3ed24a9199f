"""`hub:<dataset_id>`: a Hugging Face dataset, downloaded once and cached as a line file under data/.

Files come through `huggingface_hub` (its cache under HF_HOME, its token from HF_TOKEN or
`hf auth login`, its HF_ENDPOINT and HF_HUB_OFFLINE): the dataset's parquet files are listed on the
Hub (the `main` branch, else the Hub's own `refs/convert/parquet` conversion), downloaded one at a
time with `hf_hub_download`, and streamed in row-group batches with pyarrow, so memory does not grow
with the number or size of the files. Offline, or when the Hub cannot be reached, the listing comes
from the snapshot already in the local hub cache.

What a dataset becomes (the cache file name says which):

- `wikimedia/wikipedia`: the English subset (20231101.en), one paragraph per line, in
  `cached_wikimedia_wikipedia_<N>.txt` where N is the number of parquet files used
  (`JEPA_WIKI_MAX_FILES=N` limits it; unset: every file listed, or offline every file cached).
- datasets that `prepare` knows (UltraChat, SciQ, SQuAD v2, Natural Questions, Stack Exchange):
  `context<TAB>next_turn` pairs in `cached_<org>_<name>_pairs.txt`, for both modes (latent training
  reads the left side).
- other datasets: a text column -> one line per row (`cached_<org>_<name>.txt`); a list-of-messages
  column -> one line per turn for latent training, and for world training `context<TAB>next_turn`
  pairs (`cached_<org>_<name>_pairs.txt`), as do context/response-like column pairs.

A cache file is written through writer.AtomicLineFile: complete and non-empty, or not there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from textjepa.data.lines import LineStats
from textjepa.data.pairs import PairOptions, PairSource, chat_pairs, chat_turns, convert_rows, source_for_repo
from textjepa.data.wiki_paragraphs import (
    WIKI_MAX_CHARS,
    wikipedia_paragraph_block,
    wikipedia_paragraphs,
)
from textjepa.data.writer import AtomicLineFile, clean_field
from textjepa.errors import TextJepaError
from textjepa.io import RunKind
from textjepa.settings import Settings

WIKI_ID = "wikimedia/wikipedia"
WIKI_CONFIG = "20231101.en"
WIKI_MAX_FILES_ENV = "JEPA_WIKI_MAX_FILES"

TEXT_COLUMNS = ("text", "content", "document", "sentence", "article", "body")
MESSAGE_COLUMNS = ("messages", "conversations", "conversation", "dialogue", "chat")
PAIR_COLUMNS = (
    ("context", "response"),
    ("prompt", "response"),
    ("question", "answer"),
    ("instruction", "output"),
)
# Branches that hold parquet files: the dataset's own, then the Hub's automatic conversion.
PARQUET_REVISIONS = ("main", "refs/convert/parquet")
ROW_BATCH = 1024
_DATASET_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_SHARD = re.compile(r"^(.*?)-\d{5}-of-\d{5}")


# ---------------------------------------------------------------- naming


def check_dataset_id(dataset_id: str) -> str:
    dataset_id = dataset_id.strip()
    if not _DATASET_ID.fullmatch(dataset_id) or ".." in dataset_id:
        raise TextJepaError(f"not a hub dataset id: {dataset_id!r} (expected hub:<org>/<name>, e.g. hub:allenai/sciq)")
    return dataset_id


def cache_file_name(repo_id: str, suffix: str = "") -> str:
    return "cached_" + repo_id.replace("/", "_") + suffix + ".txt"


def wiki_max_files(settings: Settings) -> int | None:
    """JEPA_WIKI_MAX_FILES: unset or empty means every file; otherwise a positive whole number."""
    raw = settings.wiki_max_files
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise TextJepaError(
            f"{WIKI_MAX_FILES_ENV} must be a positive whole number of parquet files (or unset for all), got {raw!r}"
        )
    return value


# ---------------------------------------------------------------- listing and downloading


@dataclass(frozen=True)
class ParquetFiles:
    """The parquet files of one config and split of a hub dataset, in order."""

    repo_id: str
    revision: str
    config: str
    split: str
    paths: tuple[str, ...]
    from_cache: bool = False  # listed from the local hub cache (offline): only what was downloaded before


def describe_parquet_path(path: str) -> tuple[str, str]:
    """(config, split) from the Hub's layouts.

    `data/train-00000-of-00003-<hash>.parquet` (default config), `<config>/train-00000-of-00041.parquet`,
    `data/<subset>/train-00000-of-00001.parquet`, and the conversion branch's
    `<config>/<split>/0000.parquet` (or `<config>/partial-<split>/0000.parquet`).
    """
    parts = path.split("/")
    stem = parts[-1][: -len(".parquet")]
    if stem.isdigit() and len(parts) >= 2:
        split = parts[-2].removeprefix("partial-")
        return (parts[-3] if len(parts) >= 3 else "default"), split
    shard = _SHARD.match(stem)
    split = shard.group(1) if shard else stem
    config = parts[0] if len(parts) >= 2 and parts[0] != "data" else "default"
    return config, split


def select_parquet(
    repo_id: str,
    revision: str,
    paths: Sequence[str],
    config: str | None,
    split: str | None,
    from_cache: bool = False,
) -> ParquetFiles:
    described = [(p, *describe_parquet_path(p)) for p in sorted(paths) if p.endswith(".parquet")]
    configs = sorted({c for _, c, _ in described})
    if config is None:
        config = "default" if "default" in configs else configs[0]
        if len(configs) > 1:
            print(f"hub:{repo_id}: using config {config!r} (the dataset has {', '.join(configs)})")
    elif config not in configs:
        raise TextJepaError(f"hub:{repo_id} has no config {config!r} (configs: {', '.join(configs)})")
    splits = sorted({s for _, c, s in described if c == config})
    if split is None:
        split = "train" if "train" in splits else splits[0]
    elif split not in splits:
        raise TextJepaError(f"hub:{repo_id} has no split {split!r} in config {config!r} (splits: {', '.join(splits)})")
    chosen = tuple(p for p, c, s in described if c == config and s == split)
    return ParquetFiles(repo_id, revision, config, split, chosen, from_cache)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _not_available(repo_id: str, reason: str | None) -> TextJepaError:
    if _offline():
        return TextJepaError(
            f"hub:{repo_id} is not cached and offline (HF_HUB_OFFLINE=1): run once with network access "
            f"to download it, or use a local file"
        )
    return TextJepaError(
        f"hub:{repo_id}: the Hub could not be reached ({reason or 'no connection'}) and the dataset is not "
        f"in the local hub cache"
    )


def _hub_error(repo_id: str, exc: Exception) -> TextJepaError | None:
    """A one-line user error for the Hub's answers that no retry or cache can fix; None for the others."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return TextJepaError(
            f"hub:{repo_id} is gated: accept its terms on the Hub, then log in (`hf auth login`) or set HF_TOKEN"
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return TextJepaError(
            f"hub:{repo_id}: no such dataset on the Hub (if it is private, log in with `hf auth login` or set HF_TOKEN)"
        )
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _list_parquet(repo_id: str, revision: str, problems: list[str]) -> tuple[list[str], bool] | None:
    """(parquet paths on a branch, listed from the cache?): from the Hub, else from the local snapshot.

    None when neither knows the branch.
    """
    from huggingface_hub import HfApi, errors, snapshot_download

    if not _offline():
        try:
            files = HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision)
            return [f for f in files if f.endswith(".parquet")], False
        except errors.RevisionNotFoundError:
            return [], False
        except Exception as exc:  # network and HTTP errors of whichever HTTP client this version uses
            user_error = _hub_error(repo_id, exc)
            if user_error is not None:
                raise user_error from exc
            problems.append(_first_line(exc))
    try:
        folder = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True))
    except (errors.LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet")), True


def dataset_parquet_files(repo_id: str, config: str | None = None, split: str | None = None) -> ParquetFiles:
    problems: list[str] = []
    seen_any = False
    for revision in PARQUET_REVISIONS:
        listed = _list_parquet(repo_id, revision, problems)
        if listed is None:
            continue
        seen_any = True
        paths, from_cache = listed
        if paths:
            return select_parquet(repo_id, revision, paths, config, split, from_cache)
    if not seen_any:
        raise _not_available(repo_id, problems[0] if problems else None)
    raise TextJepaError(f"hub:{repo_id} has no parquet files (on {' or '.join(PARQUET_REVISIONS)})")


def fetch_parquet(files: ParquetFiles, path: str) -> Path:
    """One file through hf_hub_download: its cache, its token, its offline mode."""
    from huggingface_hub import errors, hf_hub_download

    try:
        return Path(hf_hub_download(files.repo_id, path, repo_type="dataset", revision=files.revision))
    except errors.LocalEntryNotFoundError as exc:
        raise _not_available(f"{files.repo_id} ({path})", _first_line(exc)) from exc
    except Exception as exc:  # network and HTTP errors of whichever HTTP client this version uses
        user_error = _hub_error(files.repo_id, exc)
        if user_error is not None:
            raise user_error from exc
        raise TextJepaError(f"hub:{files.repo_id}: downloading {path} failed: {_first_line(exc)}") from exc


def open_parquet(local: Path, label: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(local)
    except (pa.ArrowException, OSError) as exc:
        raise TextJepaError(f"{label} is not a readable parquet file: {_first_line(exc)}") from exc


def progress_bar(desc: str, enabled: bool | None):
    """tqdm on stderr; enabled=None shows it only on a terminal (runs inside training stay quiet)."""
    from tqdm import tqdm

    return tqdm(desc=desc, unit=" rows", mininterval=1.0, disable=None if enabled is None else not enabled)


def use_returning_arrow_pool(settings: Settings) -> None:
    """Make pyarrow give freed memory back, so peak memory stays flat over many files.

    pyarrow's default pool (mimalloc) keeps the buffers of finished row groups: measured over 40
    files its peak crept up ~30%, which jemalloc (or the system allocator) does not do. This is a
    process-wide setting; an explicit ARROW_DEFAULT_MEMORY_POOL is left alone.
    """
    import pyarrow as pa

    if settings.arrow_pool_chosen or pa.default_memory_pool().backend_name != "mimalloc":
        return
    for make_pool in (pa.jemalloc_memory_pool, pa.system_memory_pool):
        try:
            pa.set_memory_pool(make_pool())
            return
        except NotImplementedError:  # this pyarrow build has no jemalloc
            continue


def iter_parquet_batches(
    sources: Iterable[tuple[str, Callable[[], Path]]],
    columns: Sequence[str],
    max_rows: int | None = None,
    bar=None,
    settings: Settings | None = None,
):
    """Record batches of `columns` over (label, get local file) sources, at most max_rows rows.

    A file is fetched only when the previous ones are used up, and read one row group batch at a
    time: memory depends on the batch size, not on the number or size of the files.
    """
    import pyarrow as pa

    use_returning_arrow_pool(settings or Settings())
    remaining = max_rows
    for label, get_path in sources:
        parquet = open_parquet(get_path(), label)
        names = parquet.schema_arrow.names
        missing = [c for c in columns if c.split(".")[0] not in names]
        if missing:
            raise TextJepaError(f"{label} has no column {', '.join(missing)} (columns: {', '.join(names)})")
        if bar is not None:
            rows = parquet.metadata.num_rows
            bar.total = (bar.total or 0) + (rows if remaining is None else min(rows, remaining))
            bar.refresh()
        try:
            for batch in parquet.iter_batches(batch_size=ROW_BATCH, columns=list(columns)):
                if remaining is not None:
                    batch = batch.slice(0, remaining)
                    remaining -= batch.num_rows
                yield batch
                if bar is not None:
                    bar.update(batch.num_rows)
                if remaining == 0:
                    return
        except (pa.ArrowException, KeyError) as exc:
            raise TextJepaError(f"{label}: cannot read columns {', '.join(columns)}: {_first_line(exc)}") from exc


def iter_batches(files: ParquetFiles, columns: Sequence[str], max_rows: int | None = None, bar=None, settings=None):
    """Batches of a hub dataset's files, each downloaded (or taken from the hub cache) when reached."""
    sources = ((f"hub:{files.repo_id} file {p}", partial(fetch_parquet, files, p)) for p in files.paths)
    return iter_parquet_batches(sources, columns, max_rows, bar, settings)


def iter_local_batches(paths: Iterable[str | Path], columns: Sequence[str], max_rows: int | None = None, bar=None):
    """Batches of local parquet files (the same reading path, without the Hub)."""
    return iter_parquet_batches(((str(p), partial(Path, p)) for p in paths), columns, max_rows, bar)


def iter_rows(
    files: ParquetFiles, columns: Sequence[str], max_rows: int | None = None, bar=None, settings: Settings | None = None
) -> Iterator[dict]:
    for batch in iter_batches(files, columns, max_rows, bar, settings):
        yield from batch.to_pylist()


def first_schema(files: ParquetFiles):
    if not files.paths:
        raise TextJepaError(f"hub:{files.repo_id} has no parquet files for split {files.split!r}")
    return open_parquet(fetch_parquet(files, files.paths[0]), f"hub:{files.repo_id} file {files.paths[0]}").schema_arrow


# ---------------------------------------------------------------- line makers


def single_line(text: str) -> str:
    """A one-field line; `|||` would make the latent reader cut the line, so it is broken up."""
    return clean_field(text).replace("|||", "| | |")


def write_wikipedia_lines(batches: Iterable, writer: AtomicLineFile, stats: LineStats) -> int:
    """Paragraph lines of batches whose first column is the article text; returns how many were capped."""
    capped = 0
    for batch in batches:
        block = wikipedia_paragraph_block(batch.column(0), stats)
        if block is None:  # not an Arrow string column: the rule on Python strings
            paragraphs, cut = wikipedia_paragraphs(batch.column(0).to_pylist(), stats)
            writer.write_clean_block(paragraphs)
        else:
            lines, count, cut = block
            writer.write_clean_bytes(lines, count)
        capped += cut
    return capped


def _column_type_is_text(schema, name: str) -> bool:
    import pyarrow as pa

    return name in schema.names and (
        pa.types.is_string(schema.field(name).type) or pa.types.is_large_string(schema.field(name).type)
    )


def _messages_column(schema) -> str | None:
    import pyarrow as pa

    for name in MESSAGE_COLUMNS:
        if name in schema.names:
            kind = schema.field(name).type
            if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_struct(kind.value_type):
                return name
    return None


def _pair_columns(schema) -> tuple[str, str] | None:
    for left, right in PAIR_COLUMNS:
        if _column_type_is_text(schema, left) and _column_type_is_text(schema, right):
            return left, right
    return None


# Writes every line of a conversion; may return a note for the final report.
Filler = Callable[[AtomicLineFile, LineStats, object], "str | None"]


def _plan_generic(files: ParquetFiles, mode: RunKind, settings: Settings) -> tuple[Filler, str]:
    """How a dataset we have no converter for becomes lines, decided from its first file's columns."""
    schema = first_schema(files)
    text = next((c for c in TEXT_COLUMNS if _column_type_is_text(schema, c)), None)
    messages = _messages_column(schema)
    pair = _pair_columns(schema)
    found = ", ".join(schema.names)
    if mode == RunKind.LATENT and text:

        def fill(writer: AtomicLineFile, stats: LineStats, bar) -> None:
            for batch in iter_batches(files, [text], bar=bar, settings=settings):
                lines = [single_line(t) for t in batch.column(0).to_pylist() if t and t.strip()]
                stats.skip("empty", batch.num_rows - len(lines))
                stats.used += len(lines)
                writer.write_clean_block(lines)

        return fill, f"text column {text!r}, one line per row"
    if mode == RunKind.LATENT and messages:

        def fill(writer: AtomicLineFile, stats: LineStats, bar) -> None:
            for row in iter_rows(files, [messages], bar=bar, settings=settings):
                lines = [line for line in (single_line(said) for _, said in chat_turns(row[messages])) if line]
                stats.used += len(lines)
                writer.write_clean_block(lines)

        return fill, f"messages column {messages!r}, one line per turn"
    if mode == RunKind.WORLD and messages:

        def fill(writer: AtomicLineFile, stats: LineStats, bar) -> None:
            window = PairOptions().context_window
            for row in iter_rows(files, [messages], bar=bar, settings=settings):
                for context, reply in chat_pairs(row[messages], window, stats):
                    writer.write_record((context, reply), stats)

        return fill, f"messages column {messages!r}, context<TAB>next_turn per assistant turn"
    if mode == RunKind.WORLD and pair:

        def fill(writer: AtomicLineFile, stats: LineStats, bar) -> None:
            for row in iter_rows(files, list(pair), bar=bar, settings=settings):
                writer.write_record((row[pair[0]] or "", row[pair[1]] or ""), stats)

        return fill, f"columns {pair[0]!r} -> {pair[1]!r}"
    if mode == RunKind.WORLD:
        raise TextJepaError(
            f"hub:{files.repo_id} has no messages column or context/response columns for world training "
            f"(columns: {found}); write a context<TAB>next_turn file with `textjepa prepare` instead"
        )
    raise TextJepaError(
        f"hub:{files.repo_id}: {files.paths[0]} has no text column (looked for {', '.join(TEXT_COLUMNS)} "
        f"or a messages column; columns: {found})"
    )


def _plan_pairs(files: ParquetFiles, source: PairSource, settings: Settings) -> tuple[Filler, str]:
    def fill(writer: AtomicLineFile, stats: LineStats, bar) -> None:
        rows = iter_rows(files, source.columns, bar=bar, settings=settings)
        for context, reply in convert_rows(rows, source, PairOptions(), stats):
            writer.write_record((context, reply), stats)

    return fill, f"{source.name} context<TAB>next_turn pairs"


def _plan_wikipedia(files: ParquetFiles, settings: Settings) -> tuple[Filler, str]:
    def fill(writer: AtomicLineFile, stats: LineStats, bar) -> str | None:
        capped = write_wikipedia_lines(iter_batches(files, ["text"], bar=bar, settings=settings), writer, stats)
        return f"{capped} paragraphs longer than {WIKI_MAX_CHARS} chars were cut at a word" if capped else None

    return fill, "English Wikipedia, one paragraph per line"


# ---------------------------------------------------------------- the cache


def _reuse(target: Path, label: str) -> bool:
    if target.is_file() and target.stat().st_size > 0:
        print(f"hub:{label}: using cached {target} (delete it to download and convert again)")
        return True
    return False


def _convert(target: Path, label: str, plan: Callable[[], tuple[Filler, str]]) -> Path:
    with AtomicLineFile(target, lock=True) as writer:
        if _reuse(target, label):  # another process finished it while this one waited for the lock
            return target
        print(f"hub:{label}: not cached yet: downloading and converting to {target}")
        fill, what = plan()
        print(f"hub:{label}: {what}")
        stats = LineStats()
        bar = progress_bar(f"hub:{label}", None)
        try:
            note = fill(writer, stats, bar)
        finally:
            bar.close()
        writer.commit(f"lines from hub:{label} ({stats.summary()})")
    print(f"hub:{label}: {stats.summary(verb='wrote')} to {target}" + (f"; {note}" if note else ""))
    return target


def _cached_wikipedia(repo_id: str, data_dir: Path, mode: RunKind, settings: Settings) -> Path:
    if mode != RunKind.LATENT:
        raise TextJepaError(
            f"hub:{repo_id} gives paragraphs, not context/next_turn pairs: use it for latent or eval-jepa"
        )
    max_files = wiki_max_files(settings)
    if max_files is not None and _reuse(data_dir / cache_file_name(WIKI_ID, f"_{max_files}"), repo_id):
        return data_dir / cache_file_name(WIKI_ID, f"_{max_files}")
    files = dataset_parquet_files(WIKI_ID, config=WIKI_CONFIG, split="train")
    used = files.paths[:max_files] if max_files else files.paths
    if max_files and len(used) < max_files and files.from_cache:
        # Offline the listing is only what an earlier run downloaded; the Hub may well have more.
        raise _not_available(f"{repo_id} ({max_files} parquet files; {len(used)} are cached)", None)
    if max_files and len(used) < max_files:
        print(f"hub:{repo_id}: {WIKI_MAX_FILES_ENV}={max_files}, but only {len(used)} parquet files are available")
    files = replace(files, paths=used)
    target = data_dir / cache_file_name(WIKI_ID, f"_{len(used)}")
    if _reuse(target, repo_id):
        return target
    return _convert(target, repo_id, lambda: _plan_wikipedia(files, settings))


def cached_hub_lines(dataset_id: str, data_dir: Path, mode: RunKind, settings: Settings | None = None) -> Path:
    """The line file for `hub:<dataset_id>`: reused when cached, else downloaded and converted once.

    mode is RunKind.LATENT (any text) or RunKind.WORLD (context<TAB>next_turn pairs). settings: the environment
    the command was started with (JEPA_WIKI_MAX_FILES, ARROW_DEFAULT_MEMORY_POOL); none given, none set.
    """
    settings = settings or Settings()
    mode = RunKind(mode)
    repo_id = check_dataset_id(dataset_id)
    data_dir = Path(data_dir)
    if repo_id.lower() == WIKI_ID:
        return _cached_wikipedia(repo_id, data_dir, mode, settings)
    source = source_for_repo(repo_id)
    target = data_dir / cache_file_name(repo_id, "_pairs" if source or mode == RunKind.WORLD else "")
    if _reuse(target, repo_id):
        return target
    if source is not None:

        def plan():
            return _plan_pairs(dataset_parquet_files(repo_id, source.config, source.split), source, settings)
    else:

        def plan():
            return _plan_generic(dataset_parquet_files(repo_id), mode, settings)

    return _convert(target, repo_id, plan)
