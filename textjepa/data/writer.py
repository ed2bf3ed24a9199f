"""Writing line files that are never trusted half-written.

Every line file the data preparation writes (hub caches, `prepare` outputs) is streamed to a
temporary name in the same directory and renamed over the final name only when it is complete and
holds at least one line. A run that is killed leaves only a temporary file, which the next run
removes; the final name either does not exist or is complete.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from textjepa.data.lines import TAB, LineStats, escape
from textjepa.data.text import NotText, checked_text
from textjepa.errors import TextJepaError
from textjepa.io import TEMP_MARK, commit_temp, lock_writer, release_writer, temp_path, writer_alive

try:  # POSIX only; without it stale temporary files are recognised by their dead process id alone.
    import fcntl
except ImportError:  # pragma: no cover - not on the project's machines
    fcntl = None  # type: ignore[assignment]


def clean_field(text: str) -> str:
    """One field of one record: `\\n` escapes for newlines, no TAB, no NUL, no outer whitespace."""
    return escape(text.replace("\x00", "")).strip()


def ensure_parent_dir(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise TextJepaError(f"cannot create the directory of {path}: a file is in the way ({exc.filename})") from exc
    except OSError as exc:
        raise TextJepaError(f"cannot create the directory of {path}: {exc.strerror}") from exc
    if not path.parent.is_dir():
        raise TextJepaError(f"cannot write {path}: {path.parent} is not a directory")


# Written bytes after which the file's pages so far are flushed to disk on a thread while writing goes on, so the
# commit's fsync waits for the last stretch only (a line file of ~100 MB spent a fifth of its conversion's wall time
# in that fsync). One sync runs at a time, so a fast writer syncs less often than this. 1 MB rather than 32 MB: a
# 10 MB conversion then overlaps its syncs too (wall 4-8% shorter; docs/results.md, issue 23, ninth session).
EARLY_SYNC_BYTES = 1 << 20


class AtomicLineFile:
    """Streams records (one escaped line each) to `path` through a temporary file.

    With `lock=True` an exclusive lock on a hidden `.NAME.lock` file beside it (removed afterwards)
    is held while writing, so two processes converting the same thing (e.g. two DDP ranks resolving
    the same hub dataset) do the work once: the second waits, then finds the finished file. Under the lock
    every temporary file of this name is stale by construction. Without the lock, temporary files
    whose process is gone are stale.

    Use as a context manager and call `commit()` at the end; leaving the block without a commit (an
    error, Ctrl-C) deletes the temporary file and leaves any earlier complete file untouched.
    """

    def __init__(self, path: str | Path, lock: bool = False, early_sync_bytes: int = EARLY_SYNC_BYTES) -> None:
        self.path = Path(path)
        self.lines = 0
        self._early_sync_bytes = early_sync_bytes
        self._unsynced = 0
        self._sync: threading.Thread | None = None
        self._sync_error: OSError | None = None
        self._lock_wanted = lock and fcntl is not None
        self._lock_handle = None
        self._handle = None
        self._temp_lock: int | None = None
        self.tmp = temp_path(self.path)

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> AtomicLineFile:
        ensure_parent_dir(self.path)
        if self.path.is_dir():
            raise TextJepaError(f"output path is a directory: {self.path}")
        try:
            if self._lock_wanted:
                self._acquire_lock()
            self.remove_stale_temporaries()
            self._handle = open(self.tmp, "wb")  # closed in commit() or __exit__
            self._temp_lock = lock_writer(self.tmp)  # held until the file is in place or thrown away
        except OSError as exc:
            self._release_lock()
            raise TextJepaError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._wait_for_sync()  # before the descriptor it syncs is closed
        if self._handle is not None:  # not committed: throw the partial work away
            self._handle.close()
            self._handle = None
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
        self._release_temp_lock()
        self._release_lock()

    def _release_temp_lock(self) -> None:
        if self._temp_lock is not None:
            release_writer(self._temp_lock)
            self._temp_lock = None

    def remove_stale_temporaries(self) -> list[Path]:
        removed = []
        for candidate in self.path.parent.glob(f".{self.path.name}{TEMP_MARK}*"):
            if candidate == self.tmp:
                continue
            stale = self._lock_wanted or not writer_alive(candidate)
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    candidate.unlink()
                removed.append(candidate)
        if removed:
            print(f"removed {len(removed)} stale temporary file(s) of {self.path} from an interrupted run")
        return removed

    @property
    def _lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    def _acquire_lock(self) -> None:
        # The holder deletes the lock file when done, so a waiter may wake up holding a lock on a
        # deleted file: it must then try again on the current one (same inode = the real lock).
        while True:
            handle = open(self._lock_path, "a")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                if os.stat(self._lock_path).st_ino == os.fstat(handle.fileno()).st_ino:
                    self._lock_handle = handle
                    return
            except FileNotFoundError:
                pass
            handle.close()

    def _release_lock(self) -> None:
        if self._lock_handle is not None:
            with contextlib.suppress(FileNotFoundError):
                self._lock_path.unlink()  # while still held: nobody can be inside with another inode
            fcntl.flock(self._lock_handle.fileno(), fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    # ------------------------------------------------------------ writing

    def write_record(self, fields: Sequence[str], stats: LineStats | None = None) -> bool:
        """Clean each field and write them as one TAB-separated line; an empty field, or one that is not text (a
        lone surrogate a JSON source spelled), skips the record."""
        try:
            cleaned = [clean_field(checked_text(f)) for f in fields]
        except NotText:
            if stats is not None:
                stats.skip("not text")
            return False
        if not all(cleaned):
            if stats is not None:
                stats.skip("empty field")
            return False
        self.write_clean_line(TAB.join(cleaned))
        if stats is not None:
            stats.used += 1
        return True

    def write_clean_line(self, line: str) -> None:
        """A line the caller has already made safe (no newline, no NUL)."""
        encoded = line.encode("utf-8") + b"\n"
        self._handle.write(encoded)
        self.lines += 1
        self._written(len(encoded))

    def write_clean_block(self, lines: Sequence[str]) -> None:
        """Many safe lines at once (one encode and one write for a whole batch: the fast path)."""
        if lines:
            # Two writes rather than `joined + "\n"`, which would copy the whole block once more.
            size = self._handle.write("\n".join(lines).encode("utf-8"))
            self._handle.write(b"\n")
            self.lines += len(lines)
            self._written(size + 1)

    def write_clean_bytes(self, block, lines: int) -> None:
        """`lines` safe lines already encoded as one UTF-8 block, each ending in a newline (any bytes-like)."""
        if lines:
            self._written(self._handle.write(block))
            self.lines += lines

    def _written(self, size: int) -> None:
        self._unsynced += size
        if self._unsynced >= self._early_sync_bytes and (self._sync is None or not self._sync.is_alive()):
            self._handle.flush()
            self._unsynced = 0
            self._sync = threading.Thread(target=self._sync_written, args=(self._handle.fileno(),), daemon=True)
            self._sync.start()

    def _sync_written(self, descriptor: int) -> None:
        try:
            os.fdatasync(descriptor)
        except OSError as exc:  # raised by the commit: the commit's own fsync may no longer see a write error
            self._sync_error = exc

    def _wait_for_sync(self) -> None:
        if self._sync is not None:
            self._sync.join()
            self._sync = None

    def commit(self, what: str = "lines") -> Path:
        """Rename the temporary file to the final name; a file with no line is an error, not a result."""
        self._wait_for_sync()
        handle, self._handle = self._handle, None
        handle.close()
        if self._sync_error is not None:  # as a failed write: the same handling above (a full disk is one line)
            self.tmp.unlink(missing_ok=True)
            raise self._sync_error
        if self.lines == 0:
            self.tmp.unlink(missing_ok=True)
            raise TextJepaError(f"no usable {what} to write to {self.path}; nothing was written")
        commit_temp(self.tmp, self.path)
        self._release_temp_lock()
        return self.path
