"""Files on disk: atomic writes, the names of a run's files, and the one loader of a checkpoint's teacher."""

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import synthetic_lines

from textjepa.checkpoint import load_with_teacher, save_checkpoint
from textjepa.config import ModelConfig
from textjepa.data.tokens import train_tokenizer
from textjepa.errors import TextJepaError
from textjepa.io import (
    FREE_ON_THREAD_BYTES,
    FREE_REPLACED_THREAD,
    TEMP_MARK,
    RunFiles,
    RunKind,
    atomic_directory,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    commit_temp,
    remove_stale_temp_files,
    writer_alive,
)
from textjepa.models.heads import LatentModel


def test_an_interrupted_write_leaves_the_earlier_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "complete\n")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "complete\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def descriptors_to(path: Path) -> list[str]:
    """This process's open descriptors of `path` (a replaced file shows as "PATH (deleted)")."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(path)):
                found.append(fd)
    return found


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see descriptors")
def test_a_replaced_file_is_freed_on_a_thread_after_the_new_one_is_in_place(tmp_path):
    """Renaming over a large file made the rename wait while its blocks were freed; the old file is held open
    across the rename and its last descriptor closed on a thread. Nothing may stay open, large or small."""
    for size in (FREE_ON_THREAD_BYTES * 2, 10):
        target = tmp_path / f"lines-{size}.txt"
        atomic_write_bytes(target, b"a" * size)
        reader = open(target, "rb")  # a reader of the earlier file keeps it whole
        atomic_write_bytes(target, b"b" * size)
        assert target.read_bytes() == b"b" * size and reader.read() == b"a" * size
        reader.close()
        for thread in threading.enumerate():
            if thread.name == FREE_REPLACED_THREAD:
                thread.join()
        assert descriptors_to(target) == [], f"a descriptor of the replaced {size}-byte file was left open"
        assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no second name, no temporary
        target.unlink()


def test_a_failed_rename_leaves_no_descriptor_open(tmp_path):
    target = tmp_path / "out"
    target.mkdir()  # a file cannot be renamed over a directory
    tmp = tmp_path / "new"
    tmp.write_bytes(b"x")
    with pytest.raises(OSError):
        commit_temp(tmp, target)
    assert descriptors_to(target) == [] and target.is_dir() and tmp.read_bytes() == b"x"


def hold_writer_lock(path: Path) -> subprocess.Popen:
    """Another process that writes `path`: it holds the writer's lock until killed."""
    code = "import sys, time; from pathlib import Path; from textjepa.io import lock_writer; "
    code += "lock_writer(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_stale_temporaries_are_removed_only_when_their_writer_is_gone(tmp_path):
    # PID 1 is always alive (in a container, every restart is PID 1 again): a process id proves nothing.
    stale = tmp_path / ".a.safetensors.tmp-1"
    live = tmp_path / f".b.safetensors.tmp-{os.getppid()}"
    for path in (stale, live):
        path.write_text("partial")
    holder = hold_writer_lock(live)
    try:
        assert not writer_alive(stale) and writer_alive(live)
        remove_stale_temp_files(tmp_path)
        assert not stale.exists() and live.exists()
    finally:
        holder.kill()
        holder.wait()
    assert not writer_alive(live)  # the kernel dropped the lock with the killed writer
    remove_stale_temp_files(tmp_path)
    assert not live.exists()


def test_a_stale_temporary_directory_of_a_live_pid_is_replaced(tmp_path):
    """Killed while building as PID 1, restarted as PID 1: the old temporary directory is not a live writer."""
    target = tmp_path / "store"
    left = tmp_path / f"store{TEMP_MARK}1"
    left.mkdir()
    (left / "part.bin").write_bytes(b"half")
    with atomic_directory(target) as tmp:
        (tmp / "meta.json").write_text("{}")
    assert os.listdir(tmp_path) == ["store"] and (target / "meta.json").is_file()


def test_an_atomic_directory_appears_complete_or_not_at_all(tmp_path):
    target = tmp_path / "store"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "part.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-build")
    assert os.listdir(tmp_path) == []
    with atomic_directory(target) as tmp:
        (tmp / "meta.json").write_text("{}")
    assert os.listdir(tmp_path) == ["store"] and (target / "meta.json").is_file()


def test_run_files_are_named_from_the_checkpoint():
    files = RunFiles.create(Path("runs"), RunKind.LATENT, "9.51M")
    assert files.model.name == "model_latent_9.51M.safetensors"
    names = [files.teacher, files.state, files.metrics, files.png, files.index, files.replies, files.tokenizer]
    assert [p.name for p in names] == [
        "model_latent_9.51M_teacher.safetensors",
        "model_latent_9.51M.state.pt",
        "model_latent_9.51M.metrics.jsonl",
        "model_latent_9.51M.metrics.png",
        "model_latent_9.51M.index",
        "model_latent_9.51M.replies.txt",
        "tokenizer.json",
    ]
    assert files.vocab(RunKind.WORLD).name == "vocab_world.txt" and all(p.parent.name == "runs" for p in names)
    assert RunFiles.is_teacher(files.teacher) and not RunFiles.is_teacher(files.model)
    # The kind is a str enum: what the metadata and the file names record is unchanged.
    assert RunKind("world") is RunKind.WORLD and f"{RunKind.WORLD}" == "world" == RunKind.WORLD


@pytest.fixture
def saved_pair(tmp_path):
    tokenizer = train_tokenizer(synthetic_lines(100), 300)
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), dim=32, layers=1, heads=2, max_seq=16)
    files = RunFiles.create(tmp_path, RunKind.LATENT, "tiny")
    model = LatentModel(config)  # real tensors: loading checks them against the config
    teacher = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    save_checkpoint(files.model, RunKind.LATENT, "online", config, model.state_dict(), tokenizer, {"step": 4})
    save_checkpoint(files.teacher, RunKind.LATENT, "teacher", config, teacher, tokenizer, {"step": 4})
    return files, config, tokenizer


def test_the_teacher_is_loaded_beside_its_checkpoint(saved_pair):
    files, _, _ = saved_pair
    online, teacher = load_with_teacher(files.model, RunKind.LATENT)
    assert online.role == "online" and teacher.role == "teacher" and teacher.path == files.teacher


def test_a_missing_teacher_is_an_error_not_the_online_encoder(saved_pair):
    files, _, _ = saved_pair
    files.teacher.unlink()
    with pytest.raises(TextJepaError, match="teacher checkpoint .*_teacher.safetensors not found"):
        load_with_teacher(files.model)


def test_a_teacher_of_another_run_is_refused(saved_pair):
    files, config, tokenizer = saved_pair
    tensors = {f"encoder.{k}": torch.zeros_like(v) for k, v in LatentModel(config).encoder.state_dict().items()}
    save_checkpoint(files.teacher, RunKind.LATENT, "teacher", config, tensors, tokenizer, {"step": 9})
    with pytest.raises(TextJepaError, match="not the teacher of"):
        load_with_teacher(files.model)
