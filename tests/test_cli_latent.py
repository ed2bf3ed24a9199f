"""The latent and eval-jepa commands end to end through the real CLI, and every bad input."""

import json

import pytest
from conftest import TINY, assert_user_error, run_cli
from safetensors import safe_open


@pytest.fixture(scope="module")
def trained(tiny_latent):
    return tiny_latent


def test_latent_writes_every_artifact(trained):
    out, model = trained["out"], trained["model"]
    assert "used 600 lines, skipped 0" in trained["stdout"]
    assert model.with_name(model.name.replace(".safetensors", "_teacher.safetensors")).is_file()
    for name in ("tokenizer.json", "vocab_latent.txt"):
        assert (out / name).is_file()
    stem = model.name.replace(".safetensors", "")
    assert (out / f"{stem}.metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (out / f"{stem}.metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "val"}
    assert all("tokens_per_s" in r for r in records if r["split"] == "train")
    with safe_open(str(model), "pt") as handle:
        meta = handle.metadata()
    config = json.loads(meta["config"])
    assert (config["dim"], config["layers"], config["heads"], config["max_seq"]) == (32, 1, 2, 32)
    assert meta["format"] == "textjepa" and len(meta["tokenizer_hash"]) == 16
    info = json.loads(meta["info"])
    assert info["step"] in (40, 80) and info["val"]["val_loss"] > 0
    vocab = (out / "vocab_latent.txt").read_text().splitlines()
    assert vocab[:3] == ["<pad>", "<unk>", "<mask>"] and len(vocab) == config["vocab_size"]


def test_eval_jepa_trained_beats_untrained(trained, tmp_path):
    report_path = tmp_path / "eval.json"
    result = run_cli(
        "eval-jepa", trained["model"], "--data-dir", trained["root"] / "cache", "--json", report_path, "--batch", "16"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["split"] == "val"
    for key in ("cosine_mean", "l2_mean", "retrieval_top1", "retrieval_top5", "retrieval_mrr", "mean_rank"):
        assert key in report["trained"] and key in report["untrained_baseline"]
    assert report["trained"]["retrieval_top1"] > report["untrained_baseline"]["retrieval_top1"] + 0.1
    assert report["trained"]["cosine_mean"] > report["untrained_baseline"]["cosine_mean"]
    assert "untrained baseline" in result.stdout


def test_seed_form_eval_and_shape_checks(trained, tmp_path):
    vocab = trained["out"] / "vocab_latent.txt"
    args = ["--eval-jepa", trained["model"], vocab, trained["corpus"]]
    ok = run_cli(*args, "3", "16", "32", "32", "1", "2", "--data-dir", trained["root"] / "cache")
    assert ok.returncode == 0, ok.stderr
    assert_user_error(run_cli(*args, "3", "16", "64", "--data-dir", trained["root"] / "cache"), "dim=64", "disagrees")
    other_vocab = tmp_path / "other_vocab.txt"
    other_vocab.write_text("<pad>\n<unk>\n<mask>\nfoo\n")
    assert_user_error(run_cli("eval-jepa", trained["model"], "--vocab", other_vocab), "does not match")


def test_resume_continues_from_the_saved_step(trained, tmp_path):
    common = [
        "latent",
        trained["corpus"],
        *TINY,
        "--batch",
        "16",
        "--eval-every",
        "10",
        "--out-dir",
        tmp_path,
        "--data-dir",
        trained["root"] / "cache",
        "--no-progress",
    ]
    assert run_cli(*common, "--steps", "20").returncode == 0
    resumed = run_cli(*common, "--steps", "30", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 20" in resumed.stdout
    steps = [json.loads(x)["step"] for x in next(tmp_path.glob("*.metrics.jsonl")).read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 30 and 20 in steps
    bigger = run_cli(
        *common[:2],
        "--dim",
        "64",
        *TINY[2:],
        *common[2 + len(TINY) :],
        "--steps",
        "30",
        "--resume",
        str(next(tmp_path.glob("*.state.pt"))),
    )
    assert_user_error(bigger, "cannot resume")


def test_corrupt_training_state_is_reported(trained, tmp_path):
    state = tmp_path / "model_latent_1k.state.pt"
    state.write_bytes(b"TEXTJEPA-STATE-1\n" + b"0" * 64 + b"\n" + b"not a real payload")
    result = run_cli(
        "latent",
        trained["corpus"],
        *TINY,
        "--steps",
        "5",
        "--resume",
        state,
        "--out-dir",
        tmp_path,
        "--data-dir",
        trained["root"] / "cache",
    )
    assert_user_error(result, "corrupt")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty"),
        (b"\n\n   \n\t\n", "no usable"),
        (bytes(range(256)) * 64, "no usable"),
    ],
)
def test_unusable_files_give_one_line_errors(tmp_path, content, needle):
    data = tmp_path / "bad.txt"
    data.write_bytes(content)
    assert_user_error(
        run_cli("latent", data, *TINY, "--steps", "2", "--out-dir", tmp_path / "out", "--data-dir", tmp_path / "cache"),
        needle,
    )


def test_invalid_utf8_line_among_good_ones_is_counted(tmp_path):
    from conftest import synthetic_lines

    data = tmp_path / "mixed.txt"
    good = "\n".join(synthetic_lines(120)).encode()
    data.write_bytes(good + b"\n\xff\xfe\xfd broken\n" + good + b"\n")
    result = run_cli(
        "latent",
        data,
        *TINY,
        "--steps",
        "3",
        "--batch",
        "4",
        "--eval-every",
        "3",
        "--out-dir",
        tmp_path / "out",
        "--data-dir",
        tmp_path / "cache",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    assert "used 240 lines, skipped 1 (undecodable: 1)" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-vocab", "100"], "--max-vocab must be at least 259"),
        (["--heads", "3"], "heads (3) must divide dim (32)"),
        (["--steps", "0"], "steps"),
    ],
)
def test_bad_arguments(corpus, tmp_path, args, needle):
    result = run_cli("latent", corpus, *TINY, *args, "--out-dir", tmp_path / "out", "--data-dir", tmp_path / "cache")
    assert_user_error(result, needle)


def test_missing_file_and_unwritable_output(corpus, tmp_path):
    assert_user_error(run_cli("latent", tmp_path / "nope.txt", *TINY), "not found")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert_user_error(run_cli("latent", corpus, *TINY, "--out-dir", blocker / "sub"), "output directory")


def test_eval_rejects_foreign_files(tmp_path, trained):
    import torch
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    assert_user_error(run_cli("eval-jepa", foreign), "not a textjepa checkpoint")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 definitely not safetensors")
    assert_user_error(run_cli("eval-jepa", junk), "not a readable safetensors")
    assert_user_error(run_cli("eval-jepa", tmp_path / "missing.safetensors"), "not found")


def test_eval_refuses_a_checkpoint_without_its_teacher(trained, tmp_path):
    import shutil

    alone = tmp_path / trained["model"].name
    shutil.copy(trained["model"], alone)
    result = run_cli("eval-jepa", alone, "--data-dir", trained["root"] / "cache", "--batch", "16")
    assert_user_error(result, "teacher checkpoint", "not found")


def test_failed_run_never_overwrites_a_good_checkpoint(trained, tmp_path):
    before = {p.name: p.read_bytes() for p in trained["out"].glob("model_latent_*.safetensors")}
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_user_error(run_cli("latent", empty, *TINY, "--out-dir", trained["out"], "--overwrite"), "empty")
    assert_user_error(
        run_cli("latent", trained["corpus"], *TINY, "--heads", "5", "--out-dir", trained["out"], "--overwrite"), "heads"
    )
    after = {p.name: p.read_bytes() for p in trained["out"].glob("model_latent_*.safetensors")}
    assert before == after


def test_help_everywhere():
    for command in ("latent", "eval-jepa"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "usage" in result.stdout
    top = run_cli("--help")
    assert "latent" in top.stdout and "demo" in top.stdout
    seed_help = run_cli("--latent", "--help")
    assert seed_help.returncode == 0 and "--max-spans" in seed_help.stdout
