"""atomic_write_bytes and atomic_write_text cut off mid-write: by an exception and by a crash. Either way the earlier
file stays whole, and what the crash left behind is a temporary that the next run removes.

The write is cut by the kernel, not by a mock: a child process lowers its file size limit (RLIMIT_FSIZE) below the
new content, so its write stops part way. With SIGXFSZ ignored (Python's default) the write raises EFBIG; with the
signal's default action the kernel kills the process in the middle of the write, as a crash would.
"""

import os
import signal
import subprocess
import sys

import pytest
from conftest import cli_env

from textjepa.io import TEMP_MARK, remove_stale_temp_files

OLD = b"the earlier content, complete\n" * 10
NEW_SIZE = 64 * 1024  # the new content; the child may write only LIMIT bytes of it
LIMIT = 4096

CHILD = """
import resource, signal, sys
from pathlib import Path
from textjepa.errors import TextJepaError
from textjepa.io import atomic_write_bytes, atomic_write_text
target, how, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from the crash
if how == "crash":
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # over the limit, the kernel kills the process mid-write
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
try:
    if mode == "bytes":
        atomic_write_bytes(target, b"n" * {size})
    else:
        atomic_write_text(target, "\u00e9" * ({size} // 2))  # two bytes each in UTF-8
except OSError as exc:
    print("raised", exc.errno)
    sys.exit(3)
except TextJepaError as exc:  # the disk errors (EFBIG among them) become one line naming what was kept
    print("refused", exc)
    sys.exit(3)
print("wrote")
"""


def cut_write(target, how: str, mode: str) -> subprocess.CompletedProcess:
    code = CHILD.format(limit=LIMIT, size=NEW_SIZE)
    return subprocess.run(
        [sys.executable, "-c", code, str(target), how, mode], env=cli_env(), capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("mode", ["bytes", "text"])
def test_an_exception_mid_write_leaves_the_earlier_file_whole(tmp_path, mode):
    target = tmp_path / "report.json"
    target.write_bytes(OLD)
    result = cut_write(target, "exception", mode)
    # EFBIG, said as the one line of a disk error ("File too large"; the earlier file unchanged).
    assert result.returncode == 3 and result.stdout.startswith("refused cannot write"), result.stdout + result.stderr
    assert "File too large" in result.stdout and "unchanged" in result.stdout
    assert target.read_bytes() == OLD
    assert os.listdir(tmp_path) == ["report.json"]  # the writer removed its temporary


@pytest.mark.parametrize("mode", ["bytes", "text"])
def test_a_crash_mid_write_leaves_the_earlier_file_whole(tmp_path, mode):
    target = tmp_path / "report.json"
    target.write_bytes(OLD)
    result = cut_write(target, "crash", mode)
    assert result.returncode == -signal.SIGXFSZ, result.stdout + result.stderr  # killed in the middle of the write
    assert target.read_bytes() == OLD
    [left] = [p for p in tmp_path.iterdir() if p != target]
    # What the crash left is the temporary, cut at the limit; the next run removes it (its writer is gone).
    assert TEMP_MARK in left.name and left.stat().st_size == LIMIT
    remove_stale_temp_files(tmp_path)
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_complete_write_replaces_the_file(tmp_path):
    """The same child without a limit to hit: the new content is in place (so the tests above can fail)."""
    target = tmp_path / "report.json"
    target.write_bytes(OLD)
    code = CHILD.format(limit="resource.RLIM_INFINITY", size=NEW_SIZE)
    for mode, expected in (("bytes", b"n" * NEW_SIZE), ("text", "\u00e9".encode() * (NEW_SIZE // 2))):
        result = subprocess.run(
            [sys.executable, "-c", code, str(target), "exception", mode], env=cli_env(), capture_output=True, text=True
        )
        assert result.stdout.strip() == "wrote", result.stderr
        assert target.read_bytes() == expected
        target.write_bytes(OLD)
