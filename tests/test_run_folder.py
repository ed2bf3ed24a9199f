"""Issue 24: a run owns its folder (D1, D2), its disk errors are errors (T5, T6), its messages are true.

Every case goes through the real command in a subprocess.
"""

from __future__ import annotations

import signal
import subprocess

import pytest
from conftest import (
    TINY,
    assert_user_error,
    main_checkpoint,
    pair_lines,
    run_cli,
    start_cli_until,
    synthetic_lines,
)

QUICK = [*TINY, "--steps", "4", "--batch", "8", "--eval-every", "2", "--eval-batches", "1", "--no-progress"]
# Long enough that it is still training whenever the test looks; it is always stopped by the test.
LONG = [*TINY, "--steps", "100000", "--batch", "8", "--eval-every", "5", "--no-progress"]


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runfolder")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(synthetic_lines(200)) + "\n")
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(pair_lines(200)) + "\n")
    other_pairs = root / "pairs2.txt"
    other_pairs.write_text("\n".join(pair_lines(200, seed=1)) + "\n")
    return {"root": root, "corpus": corpus, "pairs": pairs, "pairs2": other_pairs, "cache": root / "cache"}


def stop(process: subprocess.Popen, how: signal.Signals = signal.SIGKILL) -> None:
    if process.poll() is None:
        process.send_signal(how)
    process.communicate(timeout=60)


def test_a_live_run_owns_its_folder_until_it_dies(lines, tmp_path):
    out = tmp_path / "two"
    live = start_cli_until(
        out, "*.metrics.jsonl", "train-world", lines["pairs"], *LONG, "--data-dir", lines["cache"], "--out-dir", out
    )
    try:
        common = ["--data-dir", lines["cache"], "--out-dir", out]
        # D1: a second run into the folder; D2: --overwrite; a run of another kind; a resume: all stop at once.
        for attempt in (
            ["train-world", lines["pairs2"], *QUICK, *common],
            ["train-world", lines["pairs2"], *QUICK, *common, "--overwrite"],
            ["train-world", lines["pairs2"], *QUICK, *common, "--resume", "auto"],
            ["latent", lines["corpus"], *QUICK, *common, "--overwrite"],
        ):
            assert_user_error(run_cli(*attempt, timeout=120), "in use", f"PID {live.pid}", str(out))
        assert live.poll() is None, "the live run was disturbed"
        metrics = next(out.glob("*.metrics.jsonl")).read_text()
    finally:
        stop(live)  # kill -9: the kernel drops the lock with the process
    assert live.returncode == -signal.SIGKILL
    assert "train-world" not in metrics and all(line.startswith("{") for line in metrics.splitlines())

    replaced = run_cli("train-world", lines["pairs2"], *QUICK, *common, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert main_checkpoint(out, "world").is_file()
    assert not (out / ".textjepa.lock").exists()  # a run that ends removes its lock


def test_a_live_embed_owns_its_output(lines, tmp_path, tiny_latent):
    big = tmp_path / "big.txt"
    big.write_text("\n".join(synthetic_lines(40000)) + "\n")
    out = tmp_path / "vectors.npy"
    first = start_cli_until(tmp_path, ".vectors.npy.lock", "embed", tiny_latent["model"], big, "--out", out)
    try:
        second = run_cli("embed", tiny_latent["model"], lines["corpus"], "--out", out, "--overwrite")
        assert_user_error(second, "in use", f"PID {first.pid}", str(out))
    finally:
        stop(first)
    again = run_cli("embed", tiny_latent["model"], lines["corpus"], "--out", out, "--overwrite")
    assert again.returncode == 0, again.stderr


def test_a_live_demo_owns_its_folder(tmp_path):
    out = tmp_path / "demo"
    first = start_cli_until(out, ".textjepa.lock", "demo", "--out-dir", out, *TINY[:6])
    try:
        second = run_cli("demo", "--out-dir", out, "--overwrite", timeout=120)
        assert_user_error(second, "in use", f"PID {first.pid}", str(out))
    finally:
        stop(first)


# --- the messages (issue 24, "Messages") ----------------------------------------------------------------------


def test_a_truncated_state_with_resume_auto_says_so(lines, tmp_path):
    out = tmp_path / "run"
    common = ["train-world", lines["pairs"], *QUICK, "--data-dir", lines["cache"], "--out-dir", out]
    assert run_cli(*common).returncode == 0
    [state] = out.glob("*.state.pt")
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a crash or a full disk mid-write
    result = run_cli(*common, "--resume", "auto")
    assert_user_error(result, "cannot be continued", state.name, "corrupt or truncated", "--overwrite")
    assert "continue it with --resume auto" not in result.stderr


def test_a_folder_given_as_a_checkpoint_is_named_as_a_folder(lines, tmp_path):
    out = tmp_path / "run"
    common = ["train-world", lines["pairs"], *QUICK, "--data-dir", lines["cache"], "--out-dir", out]
    assert run_cli(*common).returncode == 0
    model = main_checkpoint(out, "world")
    for attempt in (["eval-world", out], ["infer", out, "hello"], ["serve", out, "--port", "0"]):
        assert_user_error(run_cli(*attempt, timeout=120), f"{out} is a folder", model.name)
    assert_user_error(run_cli(*common, "--resume", out), f"{out} is a folder", ".state.pt")


def test_a_dangling_symlink_out_dir_is_named(lines, tmp_path):
    out = tmp_path / "link"
    out.symlink_to(tmp_path / "gone")
    result = run_cli("train-world", lines["pairs"], *QUICK, "--data-dir", lines["cache"], "--out-dir", out)
    assert_user_error(result, str(out), "symbolic link", str(tmp_path / "gone"), "does not exist")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train-world", "PAIRS", "--lr", "inf"], ["--lr", "finite", "inf"]),
        (["latent", "CORPUS", "--lr=-inf"], ["--lr", "positive"]),
        (["latent", "CORPUS", "--max-seq", "1"], ["--max-seq", "at least 2"]),
        (["--latent", "CORPUS", "10", "8", "--max-seq", "1"], ["--max-seq", "at least 2"]),
    ],
)
def test_values_that_would_end_in_nan_are_refused_up_front(lines, tmp_path, args, needles):
    out = tmp_path / "new"
    data = {"PAIRS": str(lines["pairs"]), "CORPUS": str(lines["corpus"])}
    result = run_cli(*[data.get(arg, arg) for arg in args], "--out-dir", out, "--data-dir", lines["cache"])
    assert_user_error(result, *needles)
    assert not out.exists()


def test_a_failed_run_leaves_no_folder_it_made(lines, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    out = tmp_path / "new" / "deeper"
    for command, data in (("train-world", empty), ("latent", empty)):
        result = run_cli(command, data, *QUICK, "--data-dir", lines["cache"], "--out-dir", out)
        assert_user_error(result, "no usable")
        assert not (tmp_path / "new").exists()
    existing = tmp_path / "kept"
    existing.mkdir()
    result = run_cli("train-world", empty, *QUICK, "--data-dir", lines["cache"], "--out-dir", existing)
    assert_user_error(result, "no usable")
    assert existing.is_dir() and not list(existing.iterdir())  # not made by the run: kept, and left clean


# --- resume says what changed (W2, W3) ---------------------------------------------------------------------------


def test_resume_lists_what_it_applies_and_refuses_what_changes_the_model_or_data(lines, tmp_path):
    data = tmp_path / "pairs.txt"
    data.write_text(lines["pairs"].read_text())
    out = tmp_path / "run"
    common = ["train-world", data, *QUICK, "--data-dir", lines["cache"], "--out-dir", out, "--lr", "5e-4"]
    assert run_cli(*common).returncode == 0

    refused = run_cli(*common, "--resume", "auto", "--val-fraction", "0.2", "--seed", "3", "--lr", "1e-3")
    assert_user_error(refused, "change the model or the data", "--val-fraction 0.05 -> 0.2", "--seed 0 -> 3")
    assert "--lr" not in refused.stderr  # only what is refused is listed in the refusal

    applied = run_cli(*common, "--resume", "auto", "--steps", "6", "--lr", "1e-3", "--regularizer", "sigreg")
    assert applied.returncode == 0, applied.stderr
    [line] = [line for line in applied.stdout.splitlines() if line.startswith("resume: changed")]
    for change in ("applied from step 4", "--lr 0.0005 -> 0.001", "--steps 4 -> 6", "--regularizer vicreg -> sigreg"):
        assert change in line, line

    size = data.stat().st_size
    with data.open("a") as handle:
        handle.write("User: one more question\tand one more answer\n")
    changed = run_cli(*common, "--resume", "auto", "--steps", "8", "--lr", "1e-3", "--regularizer", "sigreg")
    assert_user_error(changed, "the data changed", f"{size} bytes", f"{data.stat().st_size} bytes")

    evaluated = run_cli("eval-world", main_checkpoint(out, "world"), "--data-dir", lines["cache"], "--batch", "8")
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"note: {data} changed since" in evaluated.stdout, evaluated.stdout
    assert f"{data.stat().st_size} bytes" in evaluated.stdout and "all of its records" in evaluated.stdout
