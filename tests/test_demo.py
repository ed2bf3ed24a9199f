"""The embedded default runs end to end from local text only (tiny settings)."""

import re
import signal
import subprocess

from conftest import TINY, assert_user_error, run_cli, start_cli_until

from textjepa.data.local_corpus import paragraphs


def test_paragraph_splitting_drops_doctests_and_joins_lines():
    doc = "First paragraph that is long enough\nto span two lines of text.\n\n>>> print('doctest')\n\nshort"
    assert paragraphs(doc) == ["First paragraph that is long enough to span two lines of text."]


def test_demo_runs_end_to_end(tmp_path):
    result = run_cli(
        "demo",
        "--out-dir",
        tmp_path,
        "--latent-steps",
        "20",
        "--world-steps",
        "20",
        "--dim",
        "32",
        "--layers",
        "1",
        "--heads",
        "2",
        "--max-seq",
        "32",
        "--max-vocab",
        "400",
        "--eval-every",
        "20",
        "--no-progress",
        "--prompt",
        "What does `os.path.join` do?",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for needle in ("untrained baseline", "copy baseline", "mean baseline", "action: reply", "demo finished"):
        assert needle in out
    assert "prompt: What does `os.path.join` do?" in out
    # The world model's eval-world table is printed once: train-world's own, at its end.
    assert out.count("eval-world model_world_") == 1, out
    assert any(line.startswith("output: ") and len(line) > 10 for line in out.splitlines())
    assert list((tmp_path / "world").glob("model_world_*.index"))

    # A second demo into the same folder stops at once and names what the demo accepts (it has no --resume).
    again = run_cli("demo", "--out-dir", tmp_path, "--no-progress")
    assert_user_error(again, f"{tmp_path} already holds a demo run", "--overwrite", "--out-dir")
    assert "--resume" not in again.stderr


def test_stopped_demo_says_how_to_start_over(tmp_path):
    out = tmp_path / "demo"
    # Stopped once its first training stage has logged (step 10), long before that stage could finish. Before
    # that the demo parses the standard library (about 5 CPU-seconds, minutes on a busy machine).
    args = ["demo", "--out-dir", out, *TINY, "--latent-steps", "5000", "--eval-every", "1000", "--no-progress"]
    process = start_cli_until(out / "latent", "*.metrics.jsonl", *args, stdout=subprocess.DEVNULL, timeout=900)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted: the demo stopped during JEPA pretraining" in stderr and "--overwrite" in stderr, stderr
    assert "--resume" not in stderr and "Traceback" not in stderr, stderr


def test_prepare_demo_writes_the_corpus_as_real_text_in_the_line_formats(tmp_path):
    # The corpus is built once here (about 5 CPU-seconds of parsing the standard library), through the command.
    result = run_cli("prepare", "demo", "--out-dir", tmp_path / "demo")
    assert result.returncode == 0, result.stderr
    paragraphs_path, pairs_path = tmp_path / "demo" / "stdlib_paragraphs.txt", tmp_path / "demo" / "stdlib_pairs.txt"
    assert pairs_path.stat().st_size > 100_000
    counts = re.fullmatch(r"wrote (\d+) paragraphs to .*\nwrote (\d+) question -> answer pairs to .*\n", result.stdout)
    assert counts, result.stdout
    paragraph_count, pair_count = map(int, counts.groups())
    assert paragraph_count > 1000 and pair_count > 1000
    pairs = pairs_path.read_text(encoding="utf-8").splitlines()
    assert len(pairs) == pair_count and all(line.count("\t") == 1 for line in pairs)
    assert any(line.startswith("User: What does `json.dumps(") for line in pairs)
    assert len(paragraphs_path.read_text(encoding="utf-8").splitlines()) == paragraph_count
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(run_cli("prepare", "demo", "--out-dir", blocker / "sub"), "cannot write")
