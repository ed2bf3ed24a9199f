"""`hub:<dataset_id>`: download once, cache as lines under --data-dir, reuse; Wikipedia; failures.

Everything runs the real `textjepa` CLI and the real `huggingface_hub` client against a local fake
Hub on 127.0.0.1 (tests/fake_hub.py) serving real parquet files in each dataset's real layout
(tests/hub_fixtures.py), with HF_HOME in a temporary directory; offline tests then set
HF_HUB_OFFLINE=1 and point HF_ENDPOINT at a dead port, so any network access would fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, assert_user_error, cli_env, run_cli
from fake_hub import FakeHub
from hub_fixtures import SCIQ, WIKI

DEAD_ENDPOINT = "http://127.0.0.1:9"  # nothing listens there: a network attempt fails at once
WIKI_CACHE_2 = "cached_wikimedia_wikipedia_2.txt"
# Each fixture article gives 3 paragraphs of 15+ characters and 2 short fragments (headings).
WIKI_LINES_PER_FILE = 20 * 3


def _env(hf_home: Path, **extra: str) -> dict:
    env = cli_env(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "JEPA_WIKI_MAX_FILES",
        "HF_HUB_CACHE",
        "HF_DATASETS_CACHE",
    ):
        if name not in extra:
            env.pop(name, None)
    return env


def online(hub: FakeHub, hf_home: Path, **extra: str) -> dict:
    return _env(hf_home, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", **extra)


def offline(hf_home: Path, **extra: str) -> dict:
    return _env(hf_home, HF_ENDPOINT=DEAD_ENDPOINT, HF_HUB_OFFLINE="1", **extra)


def fetch(dataset: str, data_dir: Path, env: dict, mode: str = "latent") -> subprocess.CompletedProcess:
    return run_cli("prepare", "hub", dataset, "--mode", mode, "--data-dir", data_dir, env=env, timeout=120)


def leftovers(data_dir: Path) -> list[str]:
    """Temporary or lock files of the line caches (there must be none after any run that ended)."""
    return sorted(p.name for p in data_dir.glob(".cached_*")) if data_dir.exists() else []


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


# ---------------------------------------------------------------- Wikipedia and the cache


def test_wikipedia_downloads_once_then_reuses_the_cache(hub, tmp_path):
    data = tmp_path / "data"
    env = online(hub, tmp_path / "hf", JEPA_WIKI_MAX_FILES="2")
    before = len(hub.requests)
    first = fetch("hub:wikimedia/wikipedia", data, env)
    assert first.returncode == 0, first.stderr
    assert "downloading" in first.stdout
    cache = data / WIKI_CACHE_2
    assert first.stdout.strip().endswith(str(cache))
    downloaded = [p for m, p in hub.requests[before:] if m == "GET" and "/resolve/" in p]
    assert len(downloaded) == 2 and all("20231101.en/train-0000" in p for p in downloaded), downloaded

    lines = lines_of(cache)
    assert len(lines) == 2 * WIKI_LINES_PER_FILE
    # One paragraph per line: the newline inside the first paragraph became a space, the tab too.
    assert lines[0] == (
        "Topic 0-0 is a subject studied in file 0. It has a long history that spans several centuries and many places."
    )
    assert lines[1] == "The earliest record of topic 0-0 dates from antiquity, when scholars wrote about it."
    assert not any(len(line) < 15 or "\t" in line for line in lines)  # headings such as "History" are gone
    assert not any("deutscher" in line for line in lines)  # English subset only
    assert any(line.startswith("Topic 1-19 ") for line in lines) and not any("Topic 2-" in line for line in lines)
    assert "wrote 120 lines" in first.stdout and "fragment under 15 chars: 80" in first.stdout
    assert leftovers(data) == []

    before = len(hub.requests)
    again = fetch("hub:wikimedia/wikipedia", data, env)
    assert again.returncode == 0, again.stderr
    assert "using cached" in again.stdout and "downloading" not in again.stdout
    assert hub.requests[before:] == []  # not even a listing: the cache file is enough
    assert lines_of(cache) == lines

    # Deleted cache, offline: rebuilt from the hub cache with no network at all, identical.
    cache.unlink()
    rebuilt = fetch("hub:wikimedia/wikipedia", data, offline(tmp_path / "hf", JEPA_WIKI_MAX_FILES="2"))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "downloading" in rebuilt.stdout
    assert lines_of(cache) == lines

    # Asking for more files than were downloaded, offline, is not silently answered with fewer.
    more = fetch("hub:wikimedia/wikipedia", data, offline(tmp_path / "hf", JEPA_WIKI_MAX_FILES="3"))
    assert_user_error(more, "not cached and offline")
    assert not (data / "cached_wikimedia_wikipedia_3.txt").exists() and leftovers(data) == []


def test_wikipedia_without_limit_uses_every_file(hub, tmp_path):
    result = fetch("hub:wikimedia/wikipedia", tmp_path / "data", online(hub, tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert len(lines_of(tmp_path / "data" / "cached_wikimedia_wikipedia_3.txt")) == 3 * WIKI_LINES_PER_FILE


def test_wikipedia_limit_larger_than_the_dataset_uses_all_and_says_so(hub, tmp_path):
    result = fetch("hub:wikimedia/wikipedia", tmp_path / "data", online(hub, tmp_path / "hf", JEPA_WIKI_MAX_FILES="9"))
    assert result.returncode == 0, result.stderr
    assert "only 3 parquet files are available" in result.stdout
    assert (tmp_path / "data" / "cached_wikimedia_wikipedia_3.txt").is_file()


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_wiki_max_files_is_a_clear_error(tmp_path, value):
    result = fetch("hub:wikimedia/wikipedia", tmp_path / "data", offline(tmp_path / "hf", JEPA_WIKI_MAX_FILES=value))
    assert_user_error(result, "JEPA_WIKI_MAX_FILES", "positive whole number")
    assert leftovers(tmp_path / "data") == []


def test_wikipedia_is_not_world_data(tmp_path):
    result = fetch("hub:wikimedia/wikipedia", tmp_path / "data", offline(tmp_path / "hf"), mode="world")
    assert_user_error(result, "not context/next_turn pairs")


# ---------------------------------------------------------------- generic and known datasets


def test_text_column_becomes_escaped_lines(hub, tmp_path):
    data = tmp_path / "data"
    result = fetch("hub:textjepa-tests/plain-text", data, online(hub, tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    lines = lines_of(data / "cached_textjepa-tests_plain-text.txt")
    assert len(lines) == 12  # the blank row is skipped and counted
    assert lines[0] == "Generic line 0\\nwith a second line and a tab."
    assert "skipped 1 (empty: 1)" in result.stdout


def test_text_only_dataset_is_refused_for_world_training(hub, tmp_path):
    data = tmp_path / "data"
    result = fetch("hub:textjepa-tests/plain-text", data, online(hub, tmp_path / "hf"), mode="world")
    assert_user_error(result, "no messages column")
    assert not list(data.glob("cached_*")) and leftovers(data) == []


def test_chat_dataset_lines_for_latent_and_pairs_for_world(hub, tmp_path):
    data = tmp_path / "data"
    env = online(hub, tmp_path / "hf")
    latent = fetch("hub:textjepa-tests/sharegpt-chat", data, env)
    assert latent.returncode == 0, latent.stderr
    turns = lines_of(data / "cached_textjepa-tests_sharegpt-chat.txt")
    assert turns[:2] == ["Hello number 0, what is two plus two?", "Two plus two is four (0)."]
    world = fetch("hub:textjepa-tests/sharegpt-chat", data, env, mode="world")
    assert world.returncode == 0, world.stderr
    pairs = lines_of(data / "cached_textjepa-tests_sharegpt-chat_pairs.txt")
    assert pairs[0] == "User: Hello number 0, what is two plus two?\tTwo plus two is four (0)."
    assert len(pairs) == 5


def test_known_dataset_becomes_pairs_in_both_modes(hub, tmp_path):
    data = tmp_path / "data"
    env = online(hub, tmp_path / "hf")
    world = fetch(f"hub:{SCIQ}", data, env, mode="world")
    assert world.returncode == 0, world.stderr
    pairs = lines_of(data / "cached_allenai_sciq_pairs.txt")
    assert pairs[0] == (
        "User: What gas do plants absorb in experiment 0?\\nContext: Plants take in carbon dioxide.\\n"
        "Experiment 0 shows it.\tcarbon dioxide"
    )
    latent = fetch(f"hub:{SCIQ}", data, env)
    assert "using cached" in latent.stdout  # the same pairs file; latent training reads the left side


def test_parquet_without_a_text_column_is_a_clear_error(hub, tmp_path):
    data = tmp_path / "data"
    result = fetch("hub:textjepa-tests/no-text", data, online(hub, tmp_path / "hf"))
    assert_user_error(result, "no text column", "id, label")
    assert not list(data.glob("cached_*")) and leftovers(data) == []


def test_unknown_repo_and_bad_id(hub, tmp_path):
    missing = fetch("hub:textjepa-tests/does-not-exist", tmp_path / "data", online(hub, tmp_path / "hf"))
    assert_user_error(missing, "no such dataset", "HF_TOKEN")
    bad = fetch("hub:../etc", tmp_path / "data", offline(tmp_path / "hf"))
    assert_user_error(bad, "not a hub dataset id")


def test_not_cached_and_offline_leaves_no_partial_file(tmp_path):
    data = tmp_path / "data"
    result = fetch(f"hub:{SCIQ}", data, offline(tmp_path / "hf"))
    assert_user_error(result, "not cached and offline")
    assert not list(data.glob("cached_*")) and leftovers(data) == []


def test_offline_cache_works_for_every_kind_of_dataset(hub, tmp_path):
    """Download online, delete the line files, rebuild each offline from the hub cache alone."""
    data = tmp_path / "data"
    for dataset, mode in ((SCIQ, "world"), ("textjepa-tests/plain-text", "latent")):
        assert fetch(f"hub:{dataset}", data, online(hub, tmp_path / "hf"), mode=mode).returncode == 0
    first = {p.name: p.read_text() for p in data.glob("cached_*")}
    for path in data.glob("cached_*"):
        path.unlink()
    for dataset, mode in ((SCIQ, "world"), ("textjepa-tests/plain-text", "latent")):
        result = fetch(f"hub:{dataset}", data, offline(tmp_path / "hf"), mode=mode)
        assert result.returncode == 0, result.stderr
    assert {p.name: p.read_text() for p in data.glob("cached_*")} == first


# ---------------------------------------------------------------- interrupted conversion


def test_interrupted_conversion_is_removed_and_redone(hub, tmp_path):
    data = tmp_path / "data"
    env = online(hub, tmp_path / "hf", JEPA_WIKI_MAX_FILES="2")
    hub.stall_on("20231101.en/train-00001-of-00003")  # the second file hangs mid-conversion
    process = subprocess.Popen(
        [sys.executable, "-m", "textjepa", "prepare", "hub", f"hub:{WIKI}", "--data-dir", str(data)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert hub.stalled.wait(60), "the conversion never reached the second file"
        partial = list(data.glob(f".{WIKI_CACHE_2}.tmp-*"))
        assert len(partial) == 1
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        hub.release()
    assert not (data / WIKI_CACHE_2).exists()  # nothing that could be trusted
    assert partial[0].exists()  # only the stale temporary file

    result = fetch(f"hub:{WIKI}", data, env)
    assert result.returncode == 0, result.stderr
    assert "stale temporary" in result.stdout and "downloading" in result.stdout
    assert not partial[0].exists() and leftovers(data) == []
    assert len(lines_of(data / WIKI_CACHE_2)) == 2 * WIKI_LINES_PER_FILE


# ---------------------------------------------------------------- the training commands take hub:


def test_latent_and_eval_jepa_accept_hub_data_offline(hub, tmp_path):
    hf, data, runs = tmp_path / "hf", tmp_path / "data", tmp_path / "runs"
    assert fetch(f"hub:{WIKI}", data, online(hub, hf, JEPA_WIKI_MAX_FILES="2")).returncode == 0
    (data / WIKI_CACHE_2).unlink()  # only the hub cache is left
    env = offline(hf, JEPA_WIKI_MAX_FILES="2")
    train = run_cli(
        "latent",
        f"hub:{WIKI}",
        "--steps",
        "2",
        "--batch",
        "4",
        *TINY,
        "--eval-every",
        "2",
        "--eval-batches",
        "1",
        "--data-dir",
        data,
        "--out-dir",
        runs,
        "--no-progress",
        env=env,
    )
    assert train.returncode == 0, train.stderr
    assert "downloading and converting" in train.stdout
    assert (data / WIKI_CACHE_2).is_file()
    model = next(runs.glob("model_latent_*[0-9k].safetensors"))
    evaluated = run_cli("eval-jepa", model, f"hub:{WIKI}", "--steps", "1", "--batch", "4", "--data-dir", data, env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "using cached" in evaluated.stdout
