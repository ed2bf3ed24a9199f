"""The seed's `cargo run --release -- <args>` runs the textjepa CLI (a tiny launcher in src/main.rs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, assert_user_error, cli_env

# One xdist group (scripts/test.sh: --dist loadgroup): its module-scoped cargo build is is built once, on one worker.
pytestmark = [
    pytest.mark.skipif(shutil.which("cargo") is None, reason="cargo is not installed"),
    pytest.mark.xdist_group("test_cargo"),
]


@pytest.fixture(scope="module")
def cargo_env(tmp_path_factory) -> dict:
    env = cli_env(CARGO_TARGET_DIR=str(tmp_path_factory.mktemp("cargo-target")), PYTHON=sys.executable)
    env.pop("PYTHONPATH")  # the launcher puts its own checkout on the path
    build = subprocess.run(
        ["cargo", "build", "--release", "--offline", "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    return env


def cargo_run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["cargo", "run", "--release", "--offline", "--quiet", "--", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cargo_run_shows_textjepa_help(cargo_env):
    result = cargo_run(cargo_env, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: textjepa" in result.stdout and "--latent DATA" in result.stdout


def test_cargo_run_forwards_arguments_and_exit_code(cargo_env, tmp_path):
    result = cargo_run(cargo_env, "prepare", "mix", "--output", str(tmp_path / "o.txt"), str(tmp_path / "absent.txt"))
    assert result.returncode == 2
    assert_user_error(result, "input file not found")
    (tmp_path / "a.txt").write_text("context\treply\n")
    ok = cargo_run(cargo_env, "prepare", "mix", "--output", str(tmp_path / "o.txt"), str(tmp_path / "a.txt"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o.txt").read_text() == "context\treply\n"


def test_cargo_launcher_reports_a_missing_python(cargo_env):
    result = cargo_run({**cargo_env, "PYTHON": os.path.join(str(REPO_ROOT), "no-such-python")}, "--help")
    assert result.returncode == 127 and "set PYTHON" in result.stderr
