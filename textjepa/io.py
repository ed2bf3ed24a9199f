"""Files on disk in one place: atomic writes, the names of a run's files, the kind of a run.

Every file the package writes is written to a temporary name beside it (`.NAME.tmp-PID`) and renamed over
the final name only when complete, so a crash never leaves a file that is later trusted. The writer holds an
exclusive lock (flock) on its temporary file or directory while it works: a later run tells a live writer (the
lock is held) from a killed one (the kernel dropped the lock with the process) without trusting the process id,
which repeats in containers (every restart is PID 1).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from textjepa.errors import TextJepaError

if TYPE_CHECKING:
    import torch

TEMP_MARK = ".tmp-"
FREE_REPLACED_THREAD = "textjepa-free-replaced"  # closes a replaced file's last descriptor
FREE_ON_THREAD_BYTES = 1 << 20  # smaller replaced files are freed by the committing thread itself
CHECKPOINT_SUFFIX = ".safetensors"
TEACHER_SUFFIX = "_teacher" + CHECKPOINT_SUFFIX


class RunKind(StrEnum):
    """What a training run trains; its value is what checkpoints, states and file names record."""

    LATENT = "latent"  # JEPA pretraining of the encoder (+ predictor)
    WORLD = "world"  # the world model: encoder + transition + conditioning head


# ---------------------------------------------------------------- a disk that cannot take a write

# A full disk, a quota, a read-only file system: the user's to fix, said in one line (never a traceback).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


class DiskError(TextJepaError):
    """A write the disk refused; the message names the path, why, and what was kept."""


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def disk_error(exc: OSError, path: Path, kept: str) -> DiskError:
    """`exc` (one of DISK_ERRNOS) while writing `path`, as one line that also says what is still there."""
    return DiskError(f"cannot write {path}: {exc.strerror}; {kept}")


# ---------------------------------------------------------------- temporary files and writer liveness


def temp_path(path: Path) -> Path:
    """The hidden temporary name this process writes `path` under."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def lock_writer(temp: Path) -> int:
    """Take the writer's lock on an existing temporary file or directory; it lasts until the returned descriptor
    is closed (`release_writer`) or the process ends, however it ends."""
    descriptor = os.open(temp, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


def release_writer(descriptor: int) -> None:
    with contextlib.suppress(OSError):
        os.close(descriptor)


def writer_alive(temp: Path) -> bool:
    """Whether a process still writes this temporary file or directory: one holds its writer's lock."""
    try:
        descriptor = os.open(temp, os.O_RDONLY)
    except OSError:
        return False  # gone already
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(descriptor)  # also drops the lock this check took
    return False


def remove_stale_temp_files(directory: Path) -> None:
    """Hidden temporary files (`.NAME.tmp-PID`) of writers that no longer run: a crash mid-write leaves them."""
    for path in directory.glob(f".*{TEMP_MARK}*"):
        if writer_alive(path):
            continue
        with contextlib.suppress(OSError):
            path.unlink()


def commit_temp(tmp: Path, path: Path, shared: bool = False) -> None:
    """Put a complete temporary file in place: flushed to disk, then renamed over `path` in one step.

    shared: make the file readable by everyone (safetensors creates files private to the user; checkpoints
    and indexes are meant to be shared).
    """
    if shared:
        tmp.chmod(0o644)
    descriptor = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    # Freeing the replaced file's blocks took the rename ~0.3 ms per MB (ext4), a tenth of a 10 MB line file's
    # conversion. Held open, the replaced file is freed when its descriptor closes: on a thread, after the new file is
    # in place (the interpreter waits for it at exit; a killed process has its descriptors closed by the kernel).
    earlier = _open_quietly(path)
    try:
        os.replace(tmp, path)
    except BaseException:
        if earlier is not None:
            os.close(earlier)
        raise
    if earlier is None:
        return
    if os.fstat(earlier).st_size < FREE_ON_THREAD_BYTES:  # a thread would cost more than it saves
        os.close(earlier)
    else:
        threading.Thread(target=os.close, args=(earlier,), name=FREE_REPLACED_THREAD).start()


def _open_quietly(path: Path) -> int | None:
    """A descriptor of the file at `path`, or None where there is none (O_NONBLOCK: a FIFO would wait for a writer)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None


@contextmanager
def atomic_write(path: Path, shared: bool = False) -> Iterator[Path]:
    """Yields the temporary path to write `path` under; a block that ends normally puts it in place
    (`commit_temp`), one that raises removes it and leaves any earlier `path` untouched."""
    tmp = temp_path(path)
    kept = f"the earlier {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
    try:
        tmp.write_bytes(b"")
    except OSError as exc:
        if is_disk_error(exc):
            raise disk_error(exc, path, kept) from None
        raise
    lock = lock_writer(tmp)
    try:
        yield tmp
        commit_temp(tmp, path, shared)
    except OSError as exc:
        if is_disk_error(exc):  # the half-written temporary file goes below; what was there stays
            raise disk_error(exc, path, kept + " (its partial temporary file was removed)") from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        release_writer(lock)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file (checkpoint, index, bridge), written atomically and readable by everyone."""
    from safetensors.torch import save_file

    with atomic_write(path, shared=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def write_safetensors_together(files: list[tuple[Path, dict[str, torch.Tensor], dict[str, str]]]) -> None:
    """Safetensors files that belong together (a model and its teacher, of one step): every one is written whole
    under its temporary name before any is put in place, so a failed write (a full disk) leaves the earlier set
    as it was, never a model of one step beside a teacher of another."""
    from safetensors.torch import save_file

    with ExitStack() as written:
        for path, tensors, metadata in files:
            tmp = written.enter_context(atomic_write(path, shared=True))
            save_file(tensors, str(tmp), metadata=metadata)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yields an empty temporary directory (`NAME.tmp-PID`) that becomes `target` when the block ends normally.

    Temporary directories of writers that are gone are removed first; another live process may be building the
    same directory, and whichever finishes first wins (the other's copy is dropped, the content is the same).
    A block that raises, or that removes the temporary directory itself (nothing worth keeping), leaves no trace.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{target.name}{TEMP_MARK}*"):
        if not writer_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f"{target.name}{TEMP_MARK}{os.getpid()}")
    if tmp.exists():  # our process id, but another live writer (another container sharing the folder)
        tmp = target.with_name(f"{target.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
    except OSError as exc:
        if is_disk_error(exc):
            raise disk_error(exc, target, "nothing of it was written") from None
        raise
    lock = lock_writer(tmp)
    try:
        yield tmp
        if tmp.exists() and not target.exists():
            os.replace(tmp, target)
    except OSError as exc:
        if is_disk_error(exc):
            raise disk_error(exc, target, "its partial temporary folder was removed") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        release_writer(lock)


def ensure_writable_dir(directory: Path, what: str = "output directory") -> None:
    """`directory` exists (made if need be) and a file can be written in it; else one clear error."""
    if directory.is_symlink() and not directory.exists():
        raise TextJepaError(
            f"{what} {directory} is a symbolic link to {os.readlink(directory)}, which does not exist; "
            "create its target or choose another directory"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TextJepaError(f"cannot create {what} {directory}: {exc.strerror}") from exc
    probe = directory / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TextJepaError(f"{what} {directory} is not writable: {exc.strerror}") from exc


# ---------------------------------------------------------------- a run owns its folder

RUN_LOCK = ".textjepa.lock"  # in a run's out-dir, while the run lives


def hold_lock(lock_path: Path, what: str) -> int:
    """An exclusive lock (flock) on `lock_path`, holding this process's id and command line; returns its
    descriptor (`drop_lock`). The kernel drops it with the process, however it ends (kill -9 too). Another live
    holder: one error naming its process id, at once (no waiting: the other run may take hours).

    A lock file is removed by its holder when done, so the lock taken is checked to be on the file still at the
    path (a file removed in between is a lock nobody else would see)."""
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 4096).decode("utf-8", "replace").strip() or "not yet written"
            os.close(descriptor)
            raise TextJepaError(
                f"{what} is in use by another running textjepa (PID {holder}); wait for it to end, stop it, or "
                "choose another"
            ) from None
        try:
            same_file = os.fstat(descriptor).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(descriptor)
    os.ftruncate(descriptor, 0)
    command = " ".join(["textjepa", *sys.argv[1:]])
    os.write(descriptor, f"{os.getpid()}: {command[:200]}\n".encode("utf-8", "replace"))
    return descriptor


def drop_lock(lock_path: Path, descriptor: int) -> None:
    """The holder removes its lock file, then lets the lock go."""
    with contextlib.suppress(OSError):
        lock_path.unlink()
    release_writer(descriptor)


def missing_directories(directory: Path) -> list[Path]:
    """`directory` and its ancestors that do not exist yet, deepest first: what a run would create."""
    missing = []
    for path in (directory, *directory.parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    return missing


@contextmanager
def held_lock(lock_path: Path, what: str) -> Iterator[None]:
    """`hold_lock` for the block's life; a lock file that cannot be made is one clear error."""
    try:
        lock = hold_lock(lock_path, what)
    except OSError as exc:
        raise TextJepaError(f"cannot lock {what}: {exc.strerror}") from exc
    try:
        yield
    finally:
        drop_lock(lock_path, lock)


@contextmanager
def own_directory(directory: Path, what: str = "output directory") -> Iterator[Path]:
    """A run's folder for the life of the run: made if need be and writable (`ensure_writable_dir`), and held
    under an exclusive lock (`RUN_LOCK`), so no second run, --overwrite included, writes into it meanwhile.
    A folder the run made and left empty (it failed before writing anything) is removed again."""
    made = missing_directories(directory.absolute())
    ensure_writable_dir(directory, what)
    try:
        with held_lock(directory / RUN_LOCK, f"{what} {directory}"):
            yield directory
    finally:
        for path in made:  # deepest first; one that holds anything stays, and so do its parents
            try:
                path.rmdir()
            except OSError:
                break


@contextmanager
def own_output_file(path: Path) -> Iterator[Path]:
    """One output file for the life of the command that writes it (`embed --out`): a lock beside it, as a run's
    folder has (`own_directory`)."""
    with held_lock(path.with_name(f".{path.name}.lock"), f"output {path}"):
        yield path


# ---------------------------------------------------------------- the files of one run


class RunFiles:
    """The names of one run's files, all derived from its checkpoint path `model_<kind>_<size>.safetensors`.

    Everything beside a checkpoint is found through here, never by editing its name in place.
    """

    def __init__(self, model: Path) -> None:
        self.model = Path(model)
        self.stem = self.model.name.removesuffix(CHECKPOINT_SUFFIX)

        def sibling(suffix: str) -> Path:
            return self.model.with_name(self.stem + suffix)

        self.teacher = sibling(TEACHER_SUFFIX)  # the EMA teacher's checkpoint
        self.state = sibling(".state.pt")  # the resumable training state
        self.metrics = sibling(".metrics.jsonl")  # the metrics log, one JSON record a line
        self.png = sibling(".metrics.png")  # the plot of the metrics log
        self.card = sibling(".README.md")  # the model card (train/model_card.py)
        # The retrieval decoder's latents and its reply texts (one escaped line per latent); the index is not
        # *.safetensors, so a shell glob model_world_*.safetensors still names only the checkpoints.
        self.index = sibling(".index")
        self.replies = sibling(".replies.txt")
        self.tokenizer = self.model.with_name("tokenizer.json")  # also embedded in every checkpoint

    @classmethod
    def create(cls, out_dir: Path, kind: RunKind, size: str) -> RunFiles:
        return cls(out_dir / f"model_{kind}_{size}{CHECKPOINT_SUFFIX}")

    def vocab(self, kind: RunKind) -> Path:
        """The seed's vocab file of this kind of run (`vocab_latent.txt`, `vocab_world.txt`)."""
        return self.model.with_name(f"vocab_{RunKind(kind)}.txt")

    @staticmethod
    def is_teacher(path: str | Path) -> bool:
        return str(path).endswith(TEACHER_SUFFIX)

    @staticmethod
    def run_pattern(kind: RunKind) -> str:
        """A glob for every file of the runs of this kind in an output directory."""
        return f"model_{RunKind(kind)}_*"

    @staticmethod
    def state_pattern(kind: RunKind) -> str:
        """A glob for the training states of this kind in an output directory."""
        return f"model_{RunKind(kind)}_*.state.pt"


def folder_given_as_file(folder: Path, expected: str) -> str:
    """The message for a run's folder given where one of its files was expected: the files to give instead."""
    found = sorted(
        path.name
        for path in folder.glob("model_*")
        if path.name.endswith((CHECKPOINT_SUFFIX, ".state.pt")) and not RunFiles.is_teacher(path)
    )
    hint = (
        ("give a file in it, e.g. " + ", ".join(str(folder / name) for name in found[:3]))
        if found
        else ("it holds no model_*.safetensors or training state")
    )
    return f"{folder} is a folder, not {expected}; {hint}"
