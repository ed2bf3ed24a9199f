"""The installable wheel: `pip wheel` of the source, installed (not editable) into a fresh venv, works on its own.

The venv is made with --system-site-packages so torch and the other dependencies come from this machine (no
network), and its own site-packages comes before the editable install of the source checkout, so `textjepa` inside
it is the wheel's copy; every test checks that it really ran that copy (its files under the venv), not the source.
The wheel and the venv are built once per test run (under the run's tmp folder) and shared by the tests here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, built_once, new_shared_dir

# One worker runs this file's tests, one after the other: they share the run's venv, and one of them edits its page.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_wheel")]

TEXTS = ["User: tell me about music please", "rain falls from grey clouds"]


def wheel_env() -> dict:
    """The environment of a command in the venv: no PYTHONPATH (it would put the source checkout first)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TEXTJEPA_NUM_THREADS="1")
    return env


def run_checked(args: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=wheel_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def build_wheel_and_venv(root: Path) -> dict:
    # The build runs on a copy of what the package is made of, so it leaves no build/ folder in the checkout.
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "textjepa", source / "textjepa", ignore=shutil.ignore_patterns("__pycache__"))
    # --no-build-isolation --no-index: the build uses this machine's setuptools and never asks the network.
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run_checked([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist", source], root)
    (wheel,) = (root / "dist").glob("textjepa-*.whl")
    venv = root / "venv"
    run_checked([sys.executable, "-m", "venv", "--system-site-packages", venv], root)
    python = venv / "bin" / "python"
    run_checked([python, "-m", "pip", "--disable-pip-version-check", "install", "--no-deps", "--no-index", wheel], root)
    return {"wheel": wheel, "venv": venv, "python": python, "textjepa": venv / "bin" / "textjepa"}


@pytest.fixture(scope="module")
def installed(run_dir) -> dict:
    return built_once(run_dir, "wheel-venv", lambda: build_wheel_and_venv(new_shared_dir(run_dir, "wheel")))


def installed_file(installed: dict, module: str) -> Path:
    """Where the venv's python imports `module` from (run outside the checkout, without PYTHONPATH)."""
    code = f"import {module}; print({module}.__file__)"
    return Path(run_checked([installed["python"], "-c", code], installed["venv"]).stdout.strip())


def test_the_venv_imports_the_wheels_copy_not_the_source(installed):
    package = installed_file(installed, "textjepa")
    assert package.is_relative_to(installed["venv"]), package
    assert not package.is_relative_to(REPO_ROOT), package
    # The chat page is package data inside the wheel, installed beside the code.
    page = package.parent / "serve" / "static" / "chat.html"
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        assert wheel.read("textjepa/serve/static/chat.html") == page.read_bytes()
        assert "textjepa/cli/__init__.py" in wheel.namelist()


@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"]])
def test_the_installed_command_prints_its_help(installed, args):
    result = run_checked([installed["textjepa"], *args], installed["venv"])
    assert result.stdout.startswith("usage: textjepa"), result.stdout
    if args[0] == "demo":
        assert "--out-dir" in result.stdout
    # The console script is the venv's, run by the venv's python.
    assert Path(installed["textjepa"].read_text().splitlines()[0].removeprefix("#!")) == installed["python"]


def test_the_installed_server_serves_its_own_chat_page(installed, tiny_world, tmp_path):
    # A marker appended to the installed copy's page (the venv is this file's own): the page served at / must be
    # that file, not the checkout's. The page is put back afterwards: another test compares it with the wheel's.
    page = installed_file(installed, "textjepa").parent / "serve" / "static" / "chat.html"
    original = page.read_bytes()
    marker = f"<!-- installed copy {tmp_path.name} -->"
    page.write_bytes(original + marker.encode() + b"\n")
    try:
        serves_the_installed_page(installed, tiny_world, tmp_path, marker)
    finally:
        page.write_bytes(original)


def serves_the_installed_page(installed: dict, tiny_world: dict, tmp_path: Path, marker: str) -> None:
    import httpx

    log = open(tmp_path / "serve.log", "w")
    args = [installed["textjepa"], "serve", tiny_world["world"], "--port", "0", "--precision", "fp32"]
    proc = subprocess.Popen(
        [str(a) for a in args], cwd=tmp_path, env=wheel_env(), stdout=subprocess.PIPE, stderr=log, text=True
    )
    try:
        first = proc.stdout.readline()
        assert "listening on http://" in first, first + (tmp_path / "serve.log").read_text()
        base = first.split("listening on ")[1].split()[0].removesuffix("/v1")
        response = httpx.get(f"{base}/", timeout=30)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert marker in response.text and "<script>" in response.text
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_the_installed_python_api_loads_a_checkpoint(installed, tiny_world):
    from textjepa import WorldModel

    code = (
        "import json, sys, textjepa; from textjepa import WorldModel; "
        "m = WorldModel.load(sys.argv[1], device='cpu', precision='fp32'); "
        "print(json.dumps({'file': textjepa.__file__, 'vectors': m.encode(json.loads(sys.argv[2])).tolist()}))"
    )
    result = run_checked([installed["python"], "-c", code, tiny_world["world"], json.dumps(TEXTS)], installed["venv"])
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(answer["file"]).is_relative_to(installed["venv"])
    expected = WorldModel.load(tiny_world["world"], device="cpu", precision="fp32").encode(TEXTS)
    vectors = np.array(answer["vectors"], dtype=np.float32)
    assert vectors.shape == expected.shape and np.abs(vectors).max() > 0
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
