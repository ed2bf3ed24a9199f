"""Issue 14, "nothing lost, nothing silent": run folders, checks before work, interruption, run ids.

Every case goes through the real command in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from conftest import (
    TINY,
    assert_same_training_state,
    assert_user_error,
    main_checkpoint,
    pair_lines,
    run_cli,
    start_cli_until,
    synthetic_lines,
)

from textjepa.io import RunFiles

QUICK = [*TINY, "--steps", "4", "--batch", "8", "--eval-every", "2", "--eval-batches", "1", "--no-progress"]


def run_id(model: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(model), framework="pt") as handle:
        return json.loads(handle.metadata()["info"])["run_id"]


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("reliab")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(synthetic_lines(200)) + "\n")
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(pair_lines(200)) + "\n")
    return {"root": root, "corpus": corpus, "pairs": pairs, "cache": root / "cache"}


def test_second_run_into_the_same_out_dir_is_refused_until_overwrite(lines, tmp_path):
    out = tmp_path / "run"
    common = [*QUICK, "--data-dir", lines["cache"], "--out-dir", out]
    first = run_cli("latent", lines["corpus"], *common)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.glob("model_latent_*")}
    first_id = run_id(main_checkpoint(out, "latent"))
    assert any(name.endswith(".metrics.jsonl") for name in before)

    again = run_cli("latent", lines["corpus"], *common, "--seed", "1")
    assert_user_error(again, "already holds", "--resume auto", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.glob("model_latent_*")} == before

    replaced = run_cli("latent", lines["corpus"], *common, "--seed", "1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert run_id(main_checkpoint(out, "latent")) != first_id
    # --resume auto continues the run that is there (nothing to refuse).
    resumed = run_cli("latent", lines["corpus"], *common, "--seed", "1", "--steps", "6", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr


def quick_runs(command: str, data: Path, lines: dict, tmp_path: Path) -> list[Path]:
    """Two QUICK runs of `command` (seeds 0 and 1) on the same data: the same shape, tokenizer and step, so only
    their run ids tell them apart."""
    kind = "latent" if command == "latent" else "world"
    models = []
    for seed in ("0", "1"):
        out = tmp_path / f"{kind}{seed}"
        result = run_cli(command, data, *QUICK, "--seed", seed, "--data-dir", lines["cache"], "--out-dir", out)
        assert result.returncode == 0, result.stderr
        models.append(main_checkpoint(out, kind))
    return models


def test_teacher_of_another_run_is_refused(lines, tmp_path):
    runs = quick_runs("latent", lines["corpus"], lines, tmp_path)
    shutil.copy(RunFiles(runs[0]).teacher, RunFiles(runs[1]).teacher)
    result = run_cli("eval-jepa", runs[1], "--data-dir", lines["cache"], "--batch", "8", "--steps", "1")
    assert_user_error(result, "not the teacher of")


def test_index_of_another_run_is_refused(lines, tmp_path):
    models = quick_runs("train-world", lines["pairs"], lines, tmp_path)
    source, target = RunFiles(models[0]), RunFiles(models[1])
    for name in ("index", "replies"):
        shutil.copy(getattr(source, name), getattr(target, name))
    result = run_cli("infer", models[1], "hello there")
    assert_user_error(result, "another run")


def test_seed_recipe_runs_in_one_folder(lines, tmp_path):
    """The seed's documented steps, in the current folder: --latent, then --train-world --init-encoder with the
    shell's glob of what --latent wrote there (the checkpoint and its teacher)."""
    shape = ["4", "8", "32", "32", "1", "2", "300"]  # steps batch dim max-seq layers heads max-vocab
    common = ["--eval-every", "2", "--eval-batches", "1", "--data-dir", lines["cache"], "--no-progress"]
    latent = run_cli("--latent", lines["corpus"], *shape, *common, cwd=tmp_path)
    assert latent.returncode == 0, latent.stderr
    written = sorted(str(p.name) for p in tmp_path.glob("model_latent_*.safetensors"))
    assert len(written) == 2 and not (tmp_path / "runs").exists()
    world = run_cli("--train-world", lines["pairs"], "4", "8", "--init-encoder", *written, *common, cwd=tmp_path)
    assert world.returncode == 0, world.stderr
    assert main_checkpoint(tmp_path, "world").is_file()
    # The seed form refuses to replace the run in the folder just as the subcommand does.
    assert_user_error(run_cli("--latent", lines["corpus"], *shape, *common, cwd=tmp_path), "--overwrite")
    # The subcommands keep their default folder.
    from textjepa.cli.seed_form import translate_seed_form

    assert translate_seed_form(["--latent", "d.txt", "--out-dir", "x"]).count("--out-dir") == 1
    assert translate_seed_form(["--train-world", "d.txt"])[-2:] == ["--out-dir", "."]
    # The seed trained its own encoder: its forms keep the scratch one, unless the checkpoint it starts from says.
    assert "scratch" in translate_seed_form(["--latent", "d.txt"])
    assert "--backbone" not in translate_seed_form(["--train-world", "d.txt", "--init-encoder", "m.safetensors"])


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_init_encoder_is_an_error(lines, tmp_path, value):
    result = run_cli("train-world", lines["pairs"], *QUICK, "--init-encoder", value, "--out-dir", tmp_path / "o")
    assert_user_error(result, "--init-encoder")
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("model_world_*"))


def test_too_small_validation_split_stops_before_the_first_step(lines, tmp_path):
    out = tmp_path / "o"
    result = run_cli(
        "latent", lines["corpus"], *QUICK, "--val-fraction", "0.001", "--data-dir", lines["cache"], "--out-dir", out
    )
    assert_user_error(result, "validation split is smaller than one batch")
    assert not list(out.glob("model_latent_*")), "training ran before the check"


def test_no_progress_prints_one_line_per_validation(lines, tmp_path):
    result = run_cli(
        "latent", lines["corpus"], *QUICK, "--data-dir", lines["cache"], "--out-dir", tmp_path / "o"
    )  # QUICK: --no-progress, 4 steps, a validation every 2
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in progress] == ["step 2/4", "step 4/4"], result.stdout
    for line in progress:
        assert "val_loss=" in line and "tok/s=" in line and "elapsed " in line and "eta " in line


@pytest.fixture(scope="module")
def latent_run(tiny_latent) -> Path:
    """A real latent checkpoint and its teacher to damage copies of: the session's (only read here)."""
    return tiny_latent["model"]


def edited_copy(model: Path, directory: Path, edit) -> Path:
    """A copy of a checkpoint and its teacher whose metadata `edit(metadata)` changed, tensors untouched."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    directory.mkdir()
    for suffix in (".safetensors", "_teacher.safetensors"):
        source = model.with_name(model.name.replace(".safetensors", suffix))
        with safe_open(str(source), framework="pt") as handle:
            metadata = dict(handle.metadata())
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        edit(metadata)
        save_file(tensors, str(directory / source.name), metadata=metadata)
    return directory / model.name


def set_config(**changes):
    def edit(metadata: dict) -> None:
        metadata["config"] = json.dumps({**json.loads(metadata["config"]), **changes})

    return edit


DAMAGED = {
    "dim": (set_config(dim=64), "does not match its tensors"),
    "layers": (set_config(layers=2), "missing"),
    "heads": (set_config(heads=3), "heads"),
    "no kind": (lambda m: m.pop("kind"), "no kind"),
    "config": (lambda m: m.update(config="{not json"), "metadata is damaged"),
    "tokenizer": (lambda m: m.update(tokenizer="garbage"), "tokenizer"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_checkpoint_metadata_that_disagrees_with_its_tensors_is_refused(latent_run, lines, tmp_path, case):
    edit, needle = DAMAGED[case]
    damaged = edited_copy(latent_run, tmp_path / "damaged", edit)
    result = run_cli("eval-jepa", damaged, lines["corpus"], "--data-dir", lines["cache"], "--batch", "8")
    assert_user_error(result, needle)
    assert result.returncode == 2


def test_a_checkpoints_config_is_read_from_its_metadata_as_load_checkpoint_reads_it(latent_run, lines, tmp_path):
    """train-world reads an --init-encoder checkpoint's config (its backbone picks the recipe) from the metadata
    alone: the same config load_checkpoint gives, and the same one-line error for a damaged one."""
    from textjepa.checkpoint import checkpoint_config, load_checkpoint

    assert checkpoint_config(latent_run) == load_checkpoint(latent_run).config
    damaged = edited_copy(latent_run, tmp_path / "damaged", DAMAGED["config"][0])
    world = run_cli("train-world", lines["pairs"], *QUICK, "--init-encoder", damaged, "--out-dir", tmp_path / "w")
    assert_user_error(world, "metadata is damaged")
    assert not (tmp_path / "w").exists()  # refused before the run folder was made


def test_init_encoder_and_serve_refuse_an_edited_checkpoint(latent_run, lines, tmp_path):
    damaged = edited_copy(latent_run, tmp_path / "damaged", set_config(heads=3))
    world = run_cli("train-world", lines["pairs"], *QUICK, "--init-encoder", damaged, "--out-dir", tmp_path / "w")
    assert_user_error(world, "heads")
    trained = run_cli("train-world", lines["pairs"], *QUICK, "--data-dir", lines["cache"], "--out-dir", tmp_path / "w0")
    assert trained.returncode == 0, trained.stderr
    damaged_world = edited_copy(
        main_checkpoint(tmp_path / "w0", "world"), tmp_path / "damaged-world", set_config(heads=3)
    )
    served = run_cli("serve", damaged_world, "--port", "0", timeout=120)
    assert_user_error(served, "heads")


# Validation every 25 steps, the log every 10: a stop after the first log line lands between validations.
INTERRUPTED = ["--steps", "40", "--eval-every", "25", "--batch", "8", "--seed", "2", "--no-progress"]


@pytest.fixture(scope="module")
def uninterrupted(lines, tmp_path_factory) -> Path:
    """The training state at the end of the run the interrupted runs must equal once resumed."""
    out = tmp_path_factory.mktemp("uninterrupted")
    reference = run_cli("latent", lines["corpus"], *TINY, *INTERRUPTED, "--data-dir", lines["cache"], "--out-dir", out)
    assert reference.returncode == 0, reference.stderr
    return next(out.glob("*.state.pt"))


# One xdist group (scripts/test.sh: --dist loadgroup): both signals compare with the one uninterrupted run.
@pytest.mark.xdist_group("uninterrupted")
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_the_step_and_resume_is_exact(lines, uninterrupted, tmp_path, stop_signal):
    from textjepa.checkpoint import load_training_state

    common = ["latent", lines["corpus"], *TINY, *INTERRUPTED, "--data-dir", lines["cache"]]
    out = tmp_path / "stopped"
    process = start_cli_until(out, "*.metrics.jsonl", *common, "--out-dir", out)
    process.send_signal(stop_signal)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    [state_file] = out.glob("*.state.pt")
    saved_step = load_training_state(state_file)["step"]
    assert 10 <= saved_step < 40 and saved_step != 25, (saved_step, stdout)
    assert f"after step {saved_step}; training state saved to {state_file}" in stderr and "Traceback" not in stderr

    resumed = run_cli(*common, "--out-dir", out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {saved_step}" in resumed.stdout
    final, expected = load_training_state(state_file), load_training_state(uninterrupted)
    assert final["step"] == expected["step"] == 40
    assert_same_training_state(final, expected)


# Issue 24 W1: train-world resumes as exactly as latent. "log": stopped once the first log line is written (step 10,
# between validations); "state": once the first training state is (the validation at step 25).
WORLD_STOPS = [
    ("fp32", signal.SIGINT, "log"),
    ("fp32", signal.SIGTERM, "state"),
    ("fp32", signal.SIGKILL, "state"),
    ("bf16", signal.SIGINT, "state"),
    ("bf16", signal.SIGTERM, "log"),
    ("bf16", signal.SIGKILL, "state"),
]


@pytest.fixture(scope="module")
def uninterrupted_world(lines, tmp_path_factory) -> dict:
    """The end states of uninterrupted train-world runs, by precision (made when first asked for)."""
    made: dict[str, Path] = {}

    def state(precision: str) -> Path:
        if precision not in made:
            out = tmp_path_factory.mktemp(f"uninterrupted-world-{precision}")
            common = [*TINY, *INTERRUPTED, "--precision", precision, "--queue-size", "16", "--learn-temperature"]
            reference = run_cli("train-world", lines["pairs"], *common, "--data-dir", lines["cache"], "--out-dir", out)
            assert reference.returncode == 0, reference.stderr
            made[precision] = next(out.glob("*.state.pt"))
        return made[precision]

    return state


@pytest.mark.xdist_group("uninterrupted-world")
@pytest.mark.parametrize(("precision", "stop_signal", "moment"), WORLD_STOPS)
def test_train_world_resume_is_exact(lines, uninterrupted_world, tmp_path, precision, stop_signal, moment):
    import torch

    from textjepa.checkpoint import load_training_state

    common = [
        "train-world",
        lines["pairs"],
        *TINY,
        *INTERRUPTED,
        "--precision",
        precision,
        "--queue-size",
        "16",
        "--learn-temperature",
        "--data-dir",
        lines["cache"],
    ]
    out = tmp_path / "stopped"
    pattern = "*.metrics.jsonl" if moment == "log" else "*.state.pt"
    process = start_cli_until(out, pattern, *common, "--out-dir", out)
    process.send_signal(stop_signal)
    stdout, stderr = process.communicate(timeout=60)
    [state_file] = out.glob("*.state.pt")
    saved_step = load_training_state(state_file)["step"]
    if stop_signal == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL and saved_step == 25, (process.returncode, saved_step)
    else:
        assert process.returncode == 130, stderr
        assert 10 <= saved_step < 40, (saved_step, stdout)
        assert f"after step {saved_step}; training state saved to {state_file}" in stderr and "Traceback" not in stderr

    resumed = run_cli(*common, "--out-dir", out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {saved_step}" in resumed.stdout
    final, expected = load_training_state(state_file), load_training_state(uninterrupted_world(precision))
    assert final["step"] == expected["step"] == 40
    assert_same_training_state(final, expected)
    for name, tensor in expected["loss"].items():  # the queue of negatives and the learned temperature
        assert torch.equal(final["loss"][name], tensor), f"loss.{name} differs after resume"


def test_eval_without_data_finds_the_training_data_from_anywhere(lines, tmp_path):
    train_dir = tmp_path / "project"
    train_dir.mkdir()
    shutil.copy(lines["corpus"], train_dir / "data.txt")
    out = tmp_path / "run"
    trained = run_cli("latent", "data.txt", *QUICK, "--data-dir", lines["cache"], "--out-dir", out, cwd=train_dir)
    assert trained.returncode == 0, trained.stderr
    model = main_checkpoint(out, "latent")
    evaluate = ["eval-jepa", model, "--data-dir", lines["cache"], "--batch", "8", "--steps", "1"]
    # Started elsewhere, the path typed at training time ("data.txt") is still found: it was recorded absolute.
    elsewhere = run_cli(*evaluate, cwd=tmp_path)
    assert elsewhere.returncode == 0, elsewhere.stderr
    (train_dir / "data.txt").rename(train_dir / "moved.txt")
    assert_user_error(run_cli(*evaluate, cwd=tmp_path), "not there any more", str(train_dir / "data.txt"), "DATA")
