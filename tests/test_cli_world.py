"""train-world, eval-world and infer end to end through the real CLI, and their bad inputs."""

import json
import math

import pytest
from conftest import TINY, assert_user_error, main_checkpoint, pair_lines, run_cli
from safetensors import safe_open


@pytest.fixture(scope="module")
def world_setup(frozen_mean_world):
    # The session's frozen-encoder, mean-pooled world model (conftest.FROZEN_MEAN_WORLD_ARGS says why).
    return frozen_mean_world


def test_world_artifacts_and_shared_tokenizer(world_setup):
    out = world_setup["world"].parent
    stem = world_setup["world"].name.replace(".safetensors", "")
    for name in (
        f"{stem}_teacher.safetensors",
        f"{stem}.index",
        f"{stem}.replies.txt",
        "tokenizer.json",
        "vocab_world.txt",
        f"{stem}.metrics.jsonl",
        f"{stem}.metrics.png",
    ):
        assert (out / name).is_file(), name
    with safe_open(str(world_setup["world"]), "pt") as w, safe_open(str(world_setup["latent"]), "pt") as lat:
        assert w.metadata()["tokenizer_hash"] == lat.metadata()["tokenizer_hash"]
        assert json.loads(w.metadata()["config"])["actions"] == ["reply"]
        assert {k.split(".")[0] for k in w.keys()} == {"encoder", "transition", "bridge"}
    assert (out / "vocab_world.txt").read_text() == (world_setup["latent"].parent / "vocab_latent.txt").read_text()
    assert "used 480 lines, skipped 0" in world_setup["stdout"]


def test_eval_world_beats_baselines_and_is_deterministic(world_setup, tmp_path):
    reports = []
    for name in ("a.json", "b.json"):
        path = tmp_path / name
        result = run_cli(
            "eval-world", world_setup["world"], "--batch", "16", "--data-dir", world_setup["cache"], "--json", path
        )
        assert result.returncode == 0, result.stderr
        assert "copy baseline" in result.stdout and "mean baseline" in result.stdout
        reports.append(json.loads(path.read_text()))
    assert reports[0] == reports[1]
    report = reports[0]
    assert report["split"] == "val" and report["pairs"] >= 64
    for row in ("world_model", "baseline_copy", "baseline_mean"):
        assert set(report[row]) >= {"transition_cos", "transition_l2", "R@1", "R@5", "MRR"}
    assert report["world_model"]["R@1"] > report["baseline_copy"]["R@1"] + 0.1
    assert report["world_model"]["R@1"] > report["baseline_mean"]["R@1"]


def test_seed_form_train_world_with_init_encoder(world_setup, tmp_path):
    result = run_cli(
        "--train-world",
        world_setup["pairs"],
        "10",
        "8",
        "--init-encoder",
        world_setup["latent"],
        "--out-dir",
        tmp_path,
        "--data-dir",
        world_setup["cache"],
        "--eval-every",
        "10",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    mismatch = run_cli(
        "--train-world",
        world_setup["pairs"],
        "10",
        "8",
        "64",
        "--init-encoder",
        world_setup["latent"],
        "--out-dir",
        tmp_path / "x",
        "--data-dir",
        world_setup["cache"],
    )
    assert_user_error(mismatch, "dim=64", "disagrees")


def test_fine_tune_from_a_world_checkpoint(world_setup, tmp_path):
    result = run_cli(
        "train-world",
        world_setup["pairs"],
        "--init-encoder",
        world_setup["world"],
        "--steps",
        "5",
        "--batch",
        "8",
        "--eval-every",
        "5",
        "--out-dir",
        tmp_path,
        "--data-dir",
        world_setup["cache"],
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    tuned = main_checkpoint(tmp_path, "world")
    with safe_open(str(tuned), "pt") as handle:
        assert json.loads(handle.metadata()["info"])["init_encoder"] == str(world_setup["world"])


def test_infer_answers_and_ablation_is_reported(world_setup):
    result = run_cli("infer", world_setup["world"], "tell me about cooking please", "--json", "--top-k", "3")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["action"] == "reply" and answer["conditioning_ablation"] is False
    replies = world_setup["world"].parent / world_setup["world"].name.replace(".safetensors", ".replies.txt")
    assert answer["output"] in replies.read_text().splitlines()
    assert len(answer["alternatives"]) == 3
    ablated = run_cli(
        "--infer-agent",
        world_setup["world"],
        world_setup["world"].parent / "vocab_world.txt",
        "tell me about cooking please",
        "--ablate-conditioning",
    )
    assert ablated.returncode == 0, ablated.stderr
    assert "conditioning_ablation: true" in ablated.stdout and "falls back to the context latent" in ablated.stdout
    long_prompt = run_cli("infer", world_setup["world"], "cooking " * 200)
    assert long_prompt.returncode == 0 and "truncated" in long_prompt.stdout


def test_world_bad_inputs(world_setup, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("no separators at all\njust lines\n")
    assert_user_error(
        run_cli("train-world", plain, *TINY, "--out-dir", tmp_path / "o", "--data-dir", tmp_path / "c"),
        "no usable context/next_turn pairs",
    )
    not_model = tmp_path / "not_model.safetensors"
    not_model.write_text("hello")
    common = ["--out-dir", tmp_path / "o", "--data-dir", world_setup["cache"]]
    assert_user_error(run_cli("train-world", world_setup["pairs"], "--init-encoder", not_model, *common), "safetensors")
    assert_user_error(
        run_cli("train-world", world_setup["pairs"], "--init-encoder", tmp_path / "missing", *common), "not found"
    )
    other_vocab = tmp_path / "tok.json"
    other_vocab.write_text("{}")
    assert_user_error(run_cli("eval-world", world_setup["world"], "--vocab", other_vocab), "tokenizer")
    assert_user_error(run_cli("infer", world_setup["world"], "   "), "prompt is empty")
    assert_user_error(run_cli("eval-world", world_setup["latent"]), "expected a world checkpoint")


def test_mixed_good_and_bad_lines_are_counted(world_setup, tmp_path):
    data = tmp_path / "mixed.txt"
    data.write_bytes(
        ("\n".join(pair_lines(60)) + "\nno separator\n\n\xff\n").encode("utf-8", "surrogateescape") + b"\xff\xfe\n"
    )
    result = run_cli(
        "train-world",
        data,
        "--init-encoder",
        world_setup["latent"],
        "--steps",
        "2",
        "--batch",
        "8",
        "--eval-every",
        "2",
        "--val-fraction",
        "0.3",
        "--out-dir",
        tmp_path / "o",
        "--data-dir",
        tmp_path / "c",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "used 60 lines, skipped 4" in result.stdout
    assert "no separator: 2" in result.stdout and "undecodable: 1" in result.stdout


def test_queue_and_learned_temperature_are_saved_in_the_training_state(world_setup, tmp_path):
    from textjepa.checkpoint import load_training_state

    common = [
        "train-world", world_setup["pairs"], "--init-encoder", world_setup["latent"], "--batch", "24",
        "--eval-every", "10", "--queue-size", "64", "--learn-temperature", "--out-dir", tmp_path,
        "--data-dir", world_setup["cache"], "--no-progress",
    ]  # fmt: skip
    first = run_cli(*common, "--steps", "10")
    assert first.returncode == 0, first.stderr
    [state_file] = tmp_path.glob("*.state.pt")
    state = load_training_state(state_file)
    assert int(state["loss"]["queue_filled"]) == 240 and state["loss"]["queue"].shape[0] == 64
    assert float(state["loss"]["log_inverse_temperature"]) != pytest.approx(math.log(1 / 0.05), abs=1e-6)  # learned
    resumed = run_cli(*common, "--steps", "20", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 10" in resumed.stdout
    assert int(load_training_state(state_file)["loss"]["queue_filled"]) == 480
    other = [*common[: common.index("--queue-size") + 1], "32", *common[common.index("--queue-size") + 2 :]]
    assert_user_error(run_cli(*other, "--steps", "30", "--resume", "auto"), "cannot resume", "--queue-size")
