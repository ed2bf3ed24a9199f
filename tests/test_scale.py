"""Scale and robustness for real: torchrun with 2 processes on CPU (gloo on 127.0.0.1), SIGKILL during
training then --resume, and the bad inputs of distributed runs. Real subprocesses, no mocks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    TINY,
    assert_same_training_state,
    assert_user_error,
    cli_env,
    main_checkpoint,
    run_cli,
    start_cli_until,
    synthetic_lines,
)

from textjepa.checkpoint import load_checkpoint, load_training_state
from textjepa.train.debug import optimizer_digest, tensor_digest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "textjepa",
        *map(str, args),
    ]
    return subprocess.run(command, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("scale")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(synthetic_lines(600)) + "\n")
    other = root / "other.txt"
    other.write_text("\n".join(line.upper() for line in synthetic_lines(600, seed=5)) + "\n")
    return {"root": root, "corpus": corpus, "other": other, "cache": root / "cache"}


def latent_args(data: dict, out: Path, *extra: str) -> list:
    return ["latent", data["corpus"], *TINY, "--out-dir", out, "--data-dir", data["cache"], "--no-progress", *extra]


def test_two_processes_match_one_process_with_twice_the_batch(data):
    root = data["root"]
    common = ["--steps", "6", "--eval-every", "3", "--eval-batches", "2", "--seed", "3", "--lr", "2e-3"]
    # --global-batch 16 over 2 ranks = 8 per rank; the reference: 1 process x batch 16 drawing the union.
    ddp = torchrun(
        *latent_args(data, root / "ddp", *common, "--global-batch", "16"),
        env=cli_env(TEXTJEPA_DEBUG_DIR=str(root / "dbg_ddp")),
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = run_cli(
        *latent_args(data, root / "one", *common, "--batch", "16"),
        env=cli_env(TEXTJEPA_DEBUG_DIR=str(root / "dbg_one"), TEXTJEPA_EMULATE_WORLD_SIZE="2"),
    )
    assert single.returncode == 0, single.stderr

    # The checkpoint rank 0 wrote loads and describes itself; only rank 0 wrote files.
    model = main_checkpoint(root / "ddp", "latent")
    checkpoint = load_checkpoint(model, expect_kind="latent")
    assert checkpoint.info["step"] in (3, 6) and checkpoint.config.dim == 32
    state = load_training_state(next((root / "ddp").glob("*.state.pt")))
    assert state["step"] == 6 and state["world_size"] == 2 and len(state["ranks"]) == 2
    assert ddp.stdout.count("best checkpoint:") == 1

    rank0 = [r for r in read_jsonl(root / "dbg_ddp" / "rank0.jsonl") if "records" in r]
    rank1 = [r for r in read_jsonl(root / "dbg_ddp" / "rank1.jsonl") if "records" in r]
    union = [r for r in read_jsonl(root / "dbg_one" / "rank0.jsonl") if "records" in r]
    assert len(rank0) == len(rank1) == len(union) == 6
    for a, b, one in zip(rank0, rank1, union):
        # Each rank reads its own shard, so the ranks saw different lines ...
        assert len(a["records"]) == len(b["records"]) == 8
        assert all(i % 2 == 0 for i in a["records"]) and all(i % 2 == 1 for i in b["records"])
        assert not set(a["records"]) & set(b["records"])
        # ... the one-process run saw exactly their union ...
        assert a["records"] + b["records"] == one["records"]
        # ... the EMA teacher is bit-identical on both ranks after every step ...
        assert a["teacher_sha256"] == b["teacher_sha256"]
        # ... and the global loss (mean over ranks) matches the one-process loss on the same lines. Not exactly:
        # VICReg statistics are taken over each rank's rows, not over the union.
        assert (a["loss"] + b["loss"]) / 2 == pytest.approx(one["loss"], rel=0.02)

    # Rank 0 logs the mean over the ranks; the logs of both runs agree.
    logged_ddp = {
        r["step"]: r for r in read_jsonl(next((root / "ddp").glob("*.metrics.jsonl"))) if r["split"] == "train"
    }
    logged_one = {
        r["step"]: r for r in read_jsonl(next((root / "one").glob("*.metrics.jsonl"))) if r["split"] == "train"
    }
    assert sorted(logged_ddp) == sorted(logged_one) == [3, 6]
    for step in (3, 6):
        mean_of_ranks = (
            sum((a["loss"] + b["loss"]) / 2 for a, b in zip(rank0, rank1) if step - 3 < a["step"] <= step) / 3
        )
        assert logged_ddp[step]["loss"] == pytest.approx(mean_of_ranks, rel=1e-6)
        assert logged_ddp[step]["loss"] == pytest.approx(logged_one[step]["loss"], rel=0.02)


# The killed run is stopped as soon as its first training state is written (step 10): 50 steps and five
# validations are left for the kill to land in, and the resumed run has several validations to reproduce.
KILL_RUN_STEPS = 60


def test_kill9_then_resume_continues_exactly(data):
    root = data["root"]
    args = ["--steps", KILL_RUN_STEPS, "--eval-every", "10", "--eval-batches", "2", "--batch", "16", "--seed", "1"]
    reference = run_cli(*latent_args(data, root / "ref", *args))
    assert reference.returncode == 0, reference.stderr

    out = root / "killed"
    debug = root / "dbg_killed"
    process = start_cli_until(out, "model_latent_*.state.pt", *latent_args(data, out, *args), stdout=subprocess.DEVNULL)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    # Whatever the moment of the kill, every file under its final name is complete (temp + rename).
    [state_file] = out.glob("model_latent_*.state.pt")
    state = load_training_state(state_file)
    saved_step = state["step"]
    assert 10 <= saved_step < KILL_RUN_STEPS and saved_step % 10 == 0
    for path in out.glob("*.safetensors"):
        load_checkpoint(path)
    json.loads((out / "tokenizer.json").read_text())

    resumed = run_cli(*latent_args(data, out, *args, "--resume", "auto"), env=cli_env(TEXTJEPA_DEBUG_DIR=str(debug)))
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {saved_step}" in resumed.stdout
    # The teacher and the optimizer state were restored from the file, not started afresh.
    start = read_jsonl(debug / "rank0.jsonl")[0]
    assert start["event"] == "start" and start["step"] == saved_step
    assert start["teacher_sha256"] == tensor_digest(state["teacher"].values())
    assert start["optimizer_sha256"] == optimizer_digest(state["optimizer"])
    steps = [r["step"] for r in read_jsonl(debug / "rank0.jsonl")[1:]]
    assert steps == list(range(saved_step + 1, KILL_RUN_STEPS + 1))

    # Data position, RNGs, masks, optimizer and teacher all continue: the result equals the uninterrupted run.
    final = load_training_state(state_file)
    expected = load_training_state(next((root / "ref").glob("*.state.pt")))
    assert final["step"] == expected["step"] == KILL_RUN_STEPS
    assert_same_training_state(final, expected)
    assert optimizer_digest(final["optimizer"]) == optimizer_digest(expected["optimizer"])
    # The log has each step once, in order (records past the saved step of the killed run were dropped).
    logged = [r["step"] for r in read_jsonl(next(out.glob("*.metrics.jsonl"))) if r["split"] == "train"]
    assert logged == sorted(set(logged)) and logged[-1] == KILL_RUN_STEPS
    assert not list(out.glob(".*.tmp-*")), "stale temporary files were left behind"


def test_resume_checks_state_shape_tokenizer_and_integrity(data, tmp_path):
    out = tmp_path / "run"
    first = run_cli(*latent_args(data, out, "--steps", "4", "--eval-every", "2", "--batch", "8"))
    assert first.returncode == 0, first.stderr
    [state] = out.glob("*.state.pt")
    other_tokenizer = ["latent", data["other"], *TINY, "--steps", "6", "--batch", "8", "--no-progress"]
    assert_user_error(
        run_cli(*other_tokenizer, "--out-dir", out, "--data-dir", data["cache"], "--resume", state),
        "the data changed",  # another file (and so another tokenizer): refused by the recorded data file first
    )
    other_shape = latent_args(data, tmp_path / "x", "--steps", "6", "--layers", "2", "--resume", state)
    assert_user_error(run_cli(*other_shape), "change the model or the data", "--layers 1 -> 2")

    # A truncated copy is detected by its checksum and not loaded.
    truncated = tmp_path / "model_latent_9.9k.state.pt"
    truncated.write_bytes(state.read_bytes()[:-100])
    assert_user_error(run_cli(*latent_args(data, tmp_path / "y", "--steps", "6", "--resume", truncated)), "corrupt")
    # --resume auto skips a newer damaged state and takes the newest valid one.
    damaged = out / "model_latent_0.1k.state.pt"
    payload = bytearray(state.read_bytes())
    payload[len(payload) // 2] ^= 0xFF  # one flipped byte in the middle
    damaged.write_bytes(bytes(payload))
    os.utime(damaged, (time.time() + 10, time.time() + 10))
    auto = run_cli(*latent_args(data, out, "--steps", "6", "--eval-every", "2", "--batch", "8", "--resume", "auto"))
    assert auto.returncode == 0, auto.stderr
    assert f"resumed from {state} at step 4" in auto.stdout, auto.stdout


def test_global_batch_that_does_not_divide_is_a_clear_error(data, tmp_path):
    result = torchrun(*latent_args(data, tmp_path / "out", "--steps", "2", "--global-batch", "9"))
    assert result.returncode != 0
    assert "error: --global-batch 9 does not divide among 2 processes" in result.stderr
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr


def test_unreachable_rendezvous_fails_cleanly_within_the_timeout(data, tmp_path):
    # A rank whose master never answers (nothing listens on the port).
    env = cli_env(
        WORLD_SIZE="2",
        RANK="1",
        LOCAL_RANK="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        TEXTJEPA_DIST_TIMEOUT="3",
    )
    began = time.monotonic()
    result = run_cli(*latent_args(data, tmp_path / "out", "--steps", "2"), env=env, timeout=120)
    assert_user_error(result, "could not join the distributed job", "127.0.0.1")
    assert time.monotonic() - began < 60
    # torchrun's own rendezvous for two nodes when the second never comes: bounded by join_timeout.
    began = time.monotonic()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    command += [
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv-conf",
        "join_timeout=3",
    ]
    command += ["-m", "textjepa", *map(str, latent_args(data, tmp_path / "out2", "--steps", "2"))]
    agent = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert agent.returncode != 0 and "RendezvousTimeoutError" in agent.stderr
    assert time.monotonic() - began < 60


def test_train_world_under_torchrun_with_a_frozen_encoder_phase(data):
    from test_cli_world import pair_lines

    root = data["root"]
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(pair_lines(300)) + "\n")
    result = torchrun(
        "train-world",
        pairs,
        *TINY,
        "--steps",
        "4",
        "--global-batch",
        "16",
        "--eval-every",
        "4",
        "--freeze-encoder-steps",
        "2",  # the encoder gets no gradient for two steps: DDP must cope with unused parameters
        "--val-fraction",
        "0.2",
        "--out-dir",
        root / "world",
        "--data-dir",
        data["cache"],
        "--no-progress",
        env=cli_env(TEXTJEPA_DEBUG_DIR=str(root / "dbg_world")),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(main_checkpoint(root / "world", "world")).kind == "world"
    rank0 = [r for r in read_jsonl(root / "dbg_world" / "rank0.jsonl") if "records" in r]
    rank1 = [r for r in read_jsonl(root / "dbg_world" / "rank1.jsonl") if "records" in r]
    assert len(rank0) == len(rank1) == 4
    for a, b in zip(rank0, rank1):
        assert not set(a["records"]) & set(b["records"])
        assert a["teacher_sha256"] == b["teacher_sha256"]
