"""Issue 24 T5, T6: a full or read-only disk is one `error:` line naming the path and what was kept, never a
traceback or a SIGBUS; what was written before stays valid and no temporary file is left.

On small tmpfs mounts (a real full disk); where this machine does not allow mounting one, the tests skip and say so.
Every case goes through the real command in a subprocess.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import TINY, assert_user_error, main_checkpoint, pair_lines, synthetic_lines
from conftest import run_cli_process as run_cli  # a SIGBUS must not take pytest with it

TEMP_FILES = ".*.tmp-*"


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Callable[..., Path]]:
    """mount(size, read_only=False) -> a fresh tmpfs of that size, unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or result.returncode})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("diskfull")
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(pair_lines(200)) + "\n")
    return {"pairs": pairs, "cache": root / "cache"}


def no_temp_files(folder: Path) -> bool:
    return not list(folder.rglob(TEMP_FILES)) and not list(folder.rglob("*.tmp-*"))


def test_a_full_out_dir_stops_the_run_keeping_its_last_good_files(data, tmpfs):
    from textjepa.checkpoint import load_training_state, load_with_teacher

    # 3 MB: the first validation's checkpoint, teacher and training state (about 2 MB) fit, the second's do not.
    out = tmpfs("3m") / "run"
    args = [*TINY, "--steps", "40", "--eval-every", "2", "--batch", "8", "--no-progress", "--precision", "fp32"]
    result = run_cli("train-world", data["pairs"], *args, "--data-dir", data["cache"], "--out-dir", out)
    assert_user_error(result, "cannot write", str(out), "no space left", "kept and valid", "--resume auto")
    assert no_temp_files(out), sorted(p.name for p in out.iterdir())
    [state] = out.glob("*.state.pt")
    saved = load_training_state(state)  # whole: its checksum verifies
    model, teacher = load_with_teacher(main_checkpoint(out, "world"))  # a pair of one step
    assert f"training state {state} (step {saved['step']})" in result.stderr
    assert f"(step {model.info['step']})" in result.stderr and saved["step"] >= model.info["step"]


def test_a_full_data_dir_is_an_error_without_leftovers(data, tmp_path, tmpfs):
    many = tmp_path / "many.txt"
    many.write_text("\n".join(pair_lines(4000)) + "\n")  # a token store of some 1 MB
    cache = tmpfs("64k")
    out = tmp_path / "out"
    result = run_cli("train-world", many, *TINY, "--steps", "2", "--batch", "8", "--data-dir", cache, "--out-dir", out)
    assert_user_error(result, "cannot write", str(cache), "no space left")
    assert no_temp_files(cache) and not out.exists()


def test_embed_into_a_full_disk_is_an_error_not_sigbus(tiny_latent, tmp_path, tmpfs):
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(synthetic_lines(3000)) + "\n")  # 3000 x 32 float32: 384 KB
    disk = tmpfs("128k")
    out = disk / "vectors.npy"
    result = run_cli("embed", tiny_latent["model"], lines, "--out", out)
    assert result.returncode == 2, (result.returncode, result.stderr)  # not 135 (SIGBUS)
    assert_user_error(result, "cannot write", str(out), "no space left", "no vectors.npy was written")
    assert list(disk.iterdir()) == [] or no_temp_files(disk)
    assert not out.exists()


def test_a_read_only_disk_is_an_error_line(data, tmpfs):
    runs = tmpfs("1m", read_only=True)
    assert_user_error(run_cli("demo", "--out-dir", runs / "demo"), str(runs / "demo"), "read-only")
    result = run_cli("train-world", data["pairs"], *TINY, "--data-dir", data["cache"], "--out-dir", runs / "w")
    assert_user_error(result, str(runs / "w"), "read-only")
    result = run_cli("train-world", data["pairs"], *TINY, "--data-dir", runs / "cache", "--out-dir", runs.parent / "o")
    assert_user_error(result, str(runs / "cache"), "read-only")
