"""train-world, eval-world and infer end to end through the real CLI, and their bad inputs."""

import json

import pytest
from conftest import TINY, assert_user_error, main_checkpoint, run_cli
from safetensors import safe_open

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


@pytest.fixture(scope="module")
def world_setup(tmp_path_factory):
    from conftest import synthetic_lines

    root = tmp_path_factory.mktemp("world")
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(pair_lines(480)) + "\n")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(synthetic_lines(300) + [p.replace("\t", " ") for p in pair_lines(300, 1)]) + "\n")
    cache = root / "cache"
    latent = run_cli(
        "latent",
        corpus,
        *TINY,
        "--steps",
        "30",
        "--batch",
        "16",
        "--eval-every",
        "30",
        "--out-dir",
        root / "latent",
        "--data-dir",
        cache,
        "--no-progress",
    )
    assert latent.returncode == 0, latent.stderr
    latent_model = main_checkpoint(root / "latent", "latent")
    world = run_cli(
        "train-world",
        pairs,
        "--init-encoder",
        latent_model,
        "--steps",
        "60",
        "--batch",
        "24",
        "--eval-every",
        "30",
        "--lr",
        "2e-3",
        "--val-fraction",
        "0.2",
        # The encoder stays as pretrained, so "copy the context" cannot improve with training and the
        # transition alone has to learn the question -> answer mapping.
        "--freeze-encoder-steps",
        "60",
        "--reply-contrast-weight",
        "0",
        "--out-dir",
        root / "world",
        "--data-dir",
        cache,
        "--no-progress",
    )
    assert world.returncode == 0, world.stderr
    world_model = main_checkpoint(root / "world", "world")
    return {
        "root": root,
        "pairs": pairs,
        "cache": cache,
        "latent": latent_model,
        "world": world_model,
        "stdout": world.stdout,
    }


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


def test_eval_world_beats_baselines_and_is_deterministic(world_setup):
    reports = []
    for name in ("a.json", "b.json"):
        path = world_setup["root"] / name
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
    from test_cli_world import pair_lines

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
