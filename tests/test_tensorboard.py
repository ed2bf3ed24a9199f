"""`--tensorboard DIR`: the metrics log as TensorBoard scalars, read back with TensorBoard's own reader
(EventAccumulator) and compared with metrics.jsonl, through real tiny `latent` runs and a resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY, run_cli

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve TensorBoard shows for this run folder: tag -> [(step, value)], purges applied."""
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def metrics_log_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """The same curves from metrics.jsonl: each number of a record at `<split>/<name>`."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for name, value in record.items():
            if name not in ("step", "split"):
                curves.setdefault(f"{record['split']}/{name}", []).append((record["step"], value))
    return curves


def assert_same_curves(tensorboard: dict, log: dict) -> None:
    assert sorted(tensorboard) == sorted(log)
    for tag, points in log.items():
        steps = [step for step, _ in tensorboard[tag]]
        assert steps == [step for step, _ in points], f"{tag}: steps {steps}"
        assert [v for _, v in tensorboard[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def latent_args(tiny_world_base: dict, out_dir: Path, board: Path, steps: int) -> list:
    return [
        "latent", tiny_world_base["corpus"], *TINY, "--batch", "16", "--eval-every", "10", "--steps", steps,
        "--out-dir", out_dir, "--data-dir", tiny_world_base["cache"], "--no-progress", "--tensorboard", board,
    ]  # fmt: skip


def test_tensorboard_curves_are_the_metrics_log_and_a_resume_continues_them(tiny_world_base, tmp_path):
    out, board = tmp_path / "run", tmp_path / "board"
    first = run_cli(*latent_args(tiny_world_base, out, board, 20))
    assert first.returncode == 0, first.stderr
    (metrics,) = out.glob("*.metrics.jsonl")
    (state,) = out.glob("*.state.pt")
    curves = tensorboard_scalars(board / "latent")
    assert {"train/loss", "train/lr", "train/tokens_per_s", "val/score"} <= set(curves)
    assert_same_curves(curves, metrics_log_scalars(metrics))

    # A run that logged past its last training state and was then killed: continued to step 30, then its state
    # put back to step 20's. The resume from 20 must replace steps 21..30, on both logs, not add to them.
    saved = shutil.copy2(state, tmp_path / "step-20.state.pt")
    assert run_cli(*latent_args(tiny_world_base, out, board, 30), "--resume", "auto").returncode == 0
    assert max(step for step, _ in tensorboard_scalars(board / "latent")["train/loss"]) == 30
    resumed = run_cli(*latent_args(tiny_world_base, out, board, 40), "--resume", saved)
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 20" in resumed.stdout
    curves = tensorboard_scalars(board / "latent")
    log = metrics_log_scalars(metrics)
    assert [step for step, _ in log["train/loss"]] == [10, 20, 30, 40]
    assert_same_curves(curves, log)


@pytest.mark.parametrize("command", ["latent", "train-world", "train-bridge", "demo"])
def test_every_training_command_takes_tensorboard(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "--tensorboard DIR" in result.stdout, result.stdout
