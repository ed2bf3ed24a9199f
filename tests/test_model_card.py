"""The model card (`model_<kind>_<size>.README.md`) a training run writes beside its checkpoint, read off the
session's real tiny runs: it states what its checkpoint records, and its load instructions run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, cli_env, main_checkpoint, run_cli

from textjepa.checkpoint import load_checkpoint
from textjepa.io import TEMP_MARK, RunFiles


def front_matter(card: str) -> dict[str, str]:
    block = card.split("---\n")[1]
    return dict(line.split(": ", 1) for line in block.splitlines())


def code_blocks(card: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", card, re.DOTALL)


def table_value(card: str, key: str) -> str:
    match = re.search(rf"^\| {re.escape(key)} \| (.*) \|$", card, re.MULTILINE)
    assert match, f"no row {key!r} in the card"
    return match.group(1)


@pytest.fixture(scope="module", params=["world", "latent"])
def run(request, tiny_world) -> dict:
    model = Path(tiny_world[request.param])
    return {"model": model, "card": RunFiles(model).card.read_text(), "checkpoint": load_checkpoint(model)}


def test_the_card_is_the_runs_and_names_its_checkpoint(run):
    model, card, checkpoint = run["model"], run["card"], run["checkpoint"]
    assert RunFiles(model).card.name == model.name.replace(".safetensors", ".README.md")
    meta = front_matter(card)
    assert meta["textjepa_run_id"] == checkpoint.info["run_id"] and len(meta["textjepa_run_id"]) == 32
    assert meta["textjepa_checkpoint"] == model.name and meta["textjepa_kind"] == str(checkpoint.kind)
    assert int(meta["textjepa_step"]) == checkpoint.info["step"]
    assert f"# {model.name.removesuffix('.safetensors')}" in card and RunFiles(model).teacher.name in card
    assert not list(model.parent.glob(f".*{TEMP_MARK}*")), "a temporary file was left beside the card"


def test_the_card_states_shape_data_and_settings(run):
    card, checkpoint = run["card"], run["checkpoint"]
    config = checkpoint.config
    for field in ("dim", "layers", "heads", "max_seq", "vocab_size"):
        assert table_value(card, field) == json.dumps(getattr(config, field))
    assert f"{config.layers} layers, width {config.dim}" in card  # the scratch backbone, described
    data = checkpoint.data
    assert table_value(card, "training file") == data.source
    assert table_value(card, "file size") == f"{Path(data.source).stat().st_size:,} bytes"
    assert table_value(card, "corpus hash") == data.corpus_hash
    assert table_value(card, "splits").startswith(f"{data.val_fraction:g} of the records held out")
    train = checkpoint.info["train"]
    for key in ("steps", "batch", "lr", "eval_every", "seed"):
        assert table_value(card, key) == json.dumps(train[key])


def test_the_card_holds_the_validation_of_the_kept_step(run):
    model, card, checkpoint = run["model"], run["card"], run["checkpoint"]
    val = checkpoint.info["val"]
    assert val, "the tiny run validated"
    for key, value in val.items():
        assert table_value(card, key) == f"{value:.4f}"
    # The kept step is the best validation of the metrics log.
    records = [json.loads(line) for line in RunFiles(model).metrics.read_text().splitlines()]
    best = max((r for r in records if r.get("split") == "val"), key=lambda r: r["score"])
    assert best["step"] == checkpoint.info["step"] and table_value(card, "score") == f"{best['score']:.4f}"


def test_the_cards_load_instructions_run_as_written(run, tmp_path):
    """Its Python block and its first command, run in the checkpoint's folder (the names are relative to it); an
    `embed` reads and writes in the test's own folder, never beside the shared run."""
    model, card = run["model"], run["card"]
    (python,) = code_blocks(card, "python")
    result = subprocess.run(
        [sys.executable, "-c", python], cwd=model.parent, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    (bash,) = code_blocks(card, "bash")
    args = [word.strip('"') for word in bash.splitlines()[0].split("#")[0].split()]
    assert args[0] == "textjepa" and args[2] == model.name
    if args[1] == "embed":
        (tmp_path / "texts.txt").write_text("some text\nmore text\n")
        args[3] = str(tmp_path / "texts.txt")
        args[args.index("--out") + 1] = str(tmp_path / "vectors.parquet")
    result = subprocess.run(
        [sys.executable, "-m", "textjepa", *args[1:]], cwd=model.parent, env=cli_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() or (tmp_path / "vectors.parquet").is_file()


def card_table(card: str, heading: str) -> dict[str, list[str]]:
    """The Markdown table under `heading`: its first cell -> the other cells."""
    section = card.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [
        line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ") and "---" not in line
    ]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows}


def test_the_world_card_holds_eval_worlds_table_of_the_end_of_training(tiny_world, tmp_path):
    """The table train-world computed after its last step (the world model and its baselines, the split and its
    pairs named) is the one `eval-world` prints for the checkpoint with the card's own command line."""
    model, card = Path(tiny_world["world"]), RunFiles(Path(tiny_world["world"])).card.read_text()
    rows = card_table(card, "Evaluation at the end of training")
    columns = rows.pop("")
    assert columns == ["transition_cos", "transition_l2", "R@1", "R@5", "MRR"]
    assert list(rows) == ["world model", "copy baseline", "mean baseline", "tf-idf baseline"]
    # The run printed the same table at its end.
    assert "(val split, " in tiny_world["stdout"] and "tf-idf baseline" in tiny_world["stdout"]
    (command,) = re.findall(r"The same table again: `(textjepa eval-world [^`]*)`", card)
    report_path = tmp_path / "report.json"
    args = [*command.split()[1:], "--data-dir", str(tiny_world["cache"]), "--json", str(report_path)]
    result = subprocess.run(
        [sys.executable, "-m", "textjepa", *args], cwd=model.parent, env=cli_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert (
        report["split"] == "val"
        and f"the val split of the training file (held out from training), {report['pairs']} pairs" in card
    )
    names = {"world model": "world_model", "copy baseline": "baseline_copy", "mean baseline": "baseline_mean"}
    for row, key in {**names, "tf-idf baseline": "baseline_tfidf"}.items():
        expected = [f"{report[key][column]:.4f}" if column in report[key] else "-" for column in columns]
        assert rows[row] == expected, row
    assert rows["world model"] != rows["copy baseline"]


def test_a_corpus_without_words_ends_its_run_with_the_tfidf_row_left_out(tmp_path):
    """TF-IDF finds no word in pairs of punctuation: the run still ends well, its table without that row, saying
    why."""
    import random

    rng = random.Random(0)
    marks = "!?.,;:+*/=<>#%&"
    pairs = ["".join(rng.choices(marks, k=6)) + "\t" + "".join(rng.choices(marks, k=6)) for _ in range(160)]
    (tmp_path / "pairs.txt").write_text("\n".join(pairs) + "\n")
    trained = run_cli(
        "train-world", tmp_path / "pairs.txt", *TINY, "--steps", "4", "--batch", "16", "--eval-every", "4",
        "--val-fraction", "0.2", "--no-progress", "--out-dir", tmp_path / "out", "--data-dir", tmp_path / "cache",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    card = RunFiles(main_checkpoint(tmp_path / "out", "world")).card.read_text()
    rows = card_table(card, "Evaluation at the end of training")
    assert list(rows) == ["", "world model", "copy baseline", "mean baseline"]
    assert "tf-idf baseline left out: cannot fit TF-IDF" in card and "tf-idf baseline left out" in trained.stdout
