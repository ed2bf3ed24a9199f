"""Shared test helpers: run the real CLI in a subprocess, tiny shapes, a small real corpus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tiny models so every training test takes seconds.
TINY = ["--dim", "32", "--layers", "1", "--heads", "2", "--max-seq", "32", "--max-vocab", "300"]


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TEXTJEPA_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """The real `textjepa` command in a subprocess (python -m textjepa)."""
    return subprocess.run(
        [sys.executable, "-m", "textjepa", *map(str, args)],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A user mistake: non-zero exit, a one-line `error:` message naming the problem, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    for needle in needles:
        assert needle.lower() in error_lines[0].lower(), error_lines[0]


WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
    "python encodes text into tokens and a small encoder learns to predict masked spans from context "
    "rivers carry water from mountains to the sea and cities grow along their banks"
).split()


def synthetic_lines(count: int, seed: int = 0, sep: str | None = None) -> list[str]:
    """Deterministic varied English-like lines (optionally `left<sep>right`)."""
    import random

    rng = random.Random(seed)
    lines = []
    for i in range(count):
        left = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) + f" item {i}"
        if sep is None:
            lines.append(left)
        else:
            right = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
            lines.append(f"{left}{sep}{right}")
    return lines


def main_checkpoint(directory: Path, kind: str) -> Path:
    """The one model_<kind>_<size>.safetensors in a directory (not the teacher)."""
    [path] = [p for p in directory.glob(f"model_{kind}_*.safetensors") if not p.name.endswith("_teacher.safetensors")]
    return path


TOPICS = {
    "weather": "rain falls from grey clouds and the wind is cold",
    "cooking": "boil the pasta in salted water and add the sauce",
    "music": "the guitar plays a slow melody in a minor key",
    "space": "the rocket leaves orbit and flies towards the moon",
    "garden": "plant the seeds in spring and water them daily",
    "code": "the function returns a sorted list of unique keys",
}


def pair_lines(count: int, seed: int = 0) -> list[str]:
    """Questions about a topic -> an answer about it that shares no word with the question: learnable,
    and not by copying the context."""
    import random

    rng = random.Random(seed)
    names = sorted(TOPICS)
    lines = []
    for i in range(count):
        topic = names[i % len(names)]
        words = TOPICS[topic].split()
        rng.shuffle(words)
        sep = "\t" if i % 3 else "|||"
        lines.append(f"User: tell me about {topic} please number {i}{sep}{' '.join(words[:6])}")
    return lines


def train_tiny_world(root: Path, *world_args: str) -> dict:
    """A tiny JEPA encoder on text, then a world model on topic pairs with --init-encoder (about 10 s)."""
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(pair_lines(480)) + "\n")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(synthetic_lines(300) + [p.replace("\t", " ") for p in pair_lines(300, 1)]) + "\n")
    cache = root / "cache"
    common = ["--data-dir", cache, "--no-progress"]
    latent = run_cli(
        "latent", corpus, *TINY, "--steps", "30", "--batch", "16", "--eval-every", "30", "--out-dir", root / "latent",
        *common,
    )  # fmt: skip
    assert latent.returncode == 0, latent.stderr
    latent_model = main_checkpoint(root / "latent", "latent")
    world = run_cli(
        "train-world", pairs, "--init-encoder", latent_model, "--steps", "60", "--batch", "24", "--eval-every", "30",
        "--lr", "2e-3", "--val-fraction", "0.2", *world_args, "--out-dir", root / "world", *common,
    )  # fmt: skip
    assert world.returncode == 0, world.stderr
    return {
        "root": root,
        "pairs": pairs,
        "cache": cache,
        "latent": latent_model,
        "world": main_checkpoint(root / "world", "world"),
        "stdout": world.stdout,
    }


@pytest.fixture(scope="module")
def hub():
    """A fake Hugging Face hub on 127.0.0.1 serving every dataset fixture (tests/hub_fixtures.py)."""
    from fake_hub import FakeHub
    from hub_fixtures import all_repos

    server = FakeHub()
    for repo, files in all_repos().items():
        for path, data in files.items():
            server.add_file(repo, path, data)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(synthetic_lines(400)) + "\n", encoding="utf-8")
    return path
