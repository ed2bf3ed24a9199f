"""The quality benchmark's pair sets (bench/_pairsets.py): dictd reading, cleaning, the key split and its checks."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

from _pairsets import (  # noqa: E402
    Pair,
    chat_pairs,
    check_disjoint,
    jargon_definition,
    jargon_pairs,
    read_dictd,
    read_pairs,
    split_by_key,
    write_pairs,
)

from textjepa.errors import TextJepaError  # noqa: E402


def _b64(number: int) -> str:
    """dictd's index number encoding (base64 digits, most significant first, no padding)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digits = ""
    while True:
        digits = alphabet[number % 64] + digits
        number //= 64
        if number == 0:
            return digits


ENTRIES = {
    "00-database-short": "00-database-short\n     A tiny test dictionary\n",
    "frob": (
        "frob\n /frob/, n.\n\n    [MIT] The {TMRC} term for a small object you can manipulate; see also\n"
        "    {frobnicate}.\n\n    2. A second sense that is not used.\n"
    ),
    "kluge": "kluge\n /klooj/, n.\n\n    1. A clever programming trick intended to solve a particular nasty case.\n",
    "foo": "foo\n //\n\n    See {bar}.\n",
    "0": "0\n\n\n    Numeric zero, as opposed to the letter ‘O’, on an old display.\n",
}


def _write_dictd(folder: Path) -> tuple[Path, Path]:
    body, index_lines = b"", []
    for word, text in ENTRIES.items():
        data = text.encode("utf-8")
        index_lines.append(f"{word}\t{_b64(len(body))}\t{_b64(len(data))}")
        body += data
    index = folder / "test.index"
    index.write_text("\n".join(index_lines) + "\n", encoding="utf-8")
    packed = folder / "test.dict.dz"
    packed.write_bytes(gzip.compress(body))
    return index, packed


def test_dictd_entries_are_read_at_their_offsets(tmp_path):
    index, packed = _write_dictd(tmp_path)
    entries = dict(read_dictd(index, packed))
    assert "00-database-short" not in entries  # the database's own header entries are not words
    assert entries == {word: text for word, text in ENTRIES.items() if not word.startswith("00-")}


def test_jargon_definitions_are_cleaned_and_pointers_dropped(tmp_path):
    index, packed = _write_dictd(tmp_path)
    pairs = {p.key: p for p in jargon_pairs(read_dictd(index, packed))}
    assert set(pairs) == {"frob", "kluge", "0"}  # "See {bar}." is only a pointer
    assert pairs["frob"].context == "User: What is frob?"
    assert pairs["frob"].reply == "The TMRC term for a small object you can manipulate; see also frobnicate."
    assert pairs["kluge"].reply == "A clever programming trick intended to solve a particular nasty case."
    assert pairs["0"].reply.startswith("Numeric zero")
    assert jargon_definition("bar\n //\n\n    [Usenet] short\n") is None


def test_split_by_key_shares_no_key_or_text_and_keeps_order():
    pairs = [Pair(f"k{i % 40}", f"question {i}", f"answer {i}") for i in range(400)]
    # Texts that recur under different keys: a test pair repeating a training text must be dropped.
    pairs += [Pair(f"k{i}", "question 0", f"other answer {i}") for i in range(40)]
    pairs += [Pair(f"k{i}", f"other question {i}", "answer 1") for i in range(40)]
    train, test = split_by_key(pairs, 0.3, salt="t")
    assert train and test
    assert {p.key for p in train}.isdisjoint(p.key for p in test)
    train_texts = {p.context for p in train} | {p.reply for p in train}
    assert not any(p.context in train_texts or p.reply in train_texts for p in test)
    assert [p for p in pairs if p in set(train)] == train  # file order kept
    assert split_by_key(pairs, 0.3, salt="t") == (train, test)  # deterministic
    assert split_by_key(pairs, 0.3, salt="other") != (train, test)


def test_check_disjoint_rejects_shared_text_and_repeated_candidates():
    train = [Pair("a", "what is a?", "a is the first letter")]
    with pytest.raises(TextJepaError, match="also occur"):
        check_disjoint(train, [Pair("b", "what is b?", "a is the first letter")])
    with pytest.raises(TextJepaError, match="keys"):
        check_disjoint(train, [Pair("a", "what is c?", "c")])
    with pytest.raises(TextJepaError, match="repeat"):
        check_disjoint(train, [Pair("b", "what is b?", "same"), Pair("c", "what is c?", "same")])


def test_chat_pairs_hold_earlier_turns_and_round_trip_through_the_line_format(tmp_path):
    pairs = chat_pairs([("c/0", ["Hi there", "Hello!", "How are\tyou?", "Fine, thanks."])], context_turns=2)
    assert [p.reply for p in pairs] == ["Hello!", "How are\tyou?", "Fine, thanks."]
    assert pairs[0].context == "User: Hi there"
    assert pairs[2].context == "Assistant: Hello!\nUser: How are\tyou?"  # the last two turns only
    assert {p.key for p in pairs} == {"hi there"}
    path = tmp_path / "pairs.txt"
    write_pairs(path, pairs)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(line.count("\t") == 1 for line in lines)  # one record per line
    assert read_pairs(path)[2] == ("Assistant: Hello!\nUser: How are you?", "Fine, thanks.")


@pytest.mark.slow
def test_quick_run_trains_and_scores_every_system_on_the_same_batches(tmp_path):
    """bench/quality.py --quick end to end on the chat set without MiniLM (its download-free package is an
    extra): the real latent / train-world / eval-world commands and the lexical baselines."""
    import json
    import subprocess

    from conftest import cli_env

    report_path = tmp_path / "quality.json"
    args = ["--quick", "--sets", "chat", "--systems", "world", "tfidf", "bm25", "--json", str(report_path)]
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "quality.py"), *args, "--work-dir", str(tmp_path / "work")],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    systems = report["sets"]["chat"]["systems"]
    assert set(systems) == {"world", "copy", "tfidf-eval-world", "tfidf", "bm25"}
    assert list(systems["world"]["per_seed"]) == ["0"] and systems["world"]["trained"]
    for row in systems.values():
        assert 0 <= row["mean"]["R@1"] <= row["mean"]["R@5"] <= 1
    # eval-world's own TF-IDF row (fitted on 95% of the same training file) agrees with the bench's.
    assert abs(systems["tfidf-eval-world"]["mean"]["R@1"] - systems["tfidf"]["mean"]["R@1"]) < 0.05
    assert systems["tfidf"]["mean"]["R@1"] > 2 / 64  # well above chance among 64 candidates
    assert "world R@1 beats TF-IDF" in " ".join(row["metric"] for row in report["table"])
    assert "chat:" in result.stdout and "| system | R@1 |" in result.stdout


def test_fixed_steps_and_shape_replace_the_calibration_and_bad_values_are_usage_errors(tmp_path, capsys):
    from quality import Shape, Trainer, parse_args

    args = parse_args(["--fixed-steps", "30,45,60", "--shape", "64,1,2", "--jepa-data", "both"])
    steps = tuple(int(part) for part in args.fixed_steps.split(","))
    trainer = Trainer(tmp_path, Shape(), 1, False, {}, None, steps)
    log, data = tmp_path / "log", tmp_path / "data.txt"
    assert trainer.steps_for("latent", data, None, 60.0, log) == 30
    assert trainer.steps_for("world", data, tmp_path / "jepa.safetensors", 120.0, log) == 45
    assert trainer.steps_for("world", data, None, 180.0, log) == 60
    assert not log.exists() and trainer.rates == {}  # no calibration run was started
    for bad in (["--fixed-steps", "30,45"], ["--fixed-steps", "0,1,2"], ["--shape", "64,x,2"]):
        with pytest.raises(SystemExit) as stopped:
            parse_args(bad)
        assert stopped.value.code == 2
    assert "--shape takes `demo`, or 3 or 7 positive integers" in capsys.readouterr().err


def test_the_default_shape_is_the_commands_own_and_shape_overrides_it():
    from quality import parse_args, shape_of

    from textjepa.config import DemoConfig, ModelConfig, WorldConfig

    model, world, demo = ModelConfig(), WorldConfig(), DemoConfig()
    default = shape_of(parse_args([]))
    assert (default.dim, default.layers, default.heads) == (model.dim, model.layers, model.heads)
    assert (default.max_seq, default.max_vocab, default.world_batch) == (model.max_seq, model.vocab_size, 32)
    assert default.world_batch == world.train.batch
    three = shape_of(parse_args(["--shape", "64,2,2"]))
    assert vars(three) == {**vars(default), "dim": 64, "layers": 2, "heads": 2}
    seven = shape_of(parse_args(["--shape", "64,2,2,48,3000,16,24"]))
    assert list(vars(seven).values()) == [64, 2, 2, 48, 3000, 16, 24]
    demo_shape = shape_of(parse_args(["--shape", "demo"]))
    assert (demo_shape.dim, demo_shape.max_seq, demo_shape.max_vocab, demo_shape.world_batch) == (
        demo.model.dim,
        demo.model.max_seq,
        demo.model.vocab_size,
        demo.world_batch,
    )


def _report(seed: int, systems: list[str], frozen_args: str) -> dict:
    row = {"per_seed": {str(seed): {"R@1": 0.5 + seed / 10, "R@5": 0.8, "MRR": 0.6}}, "trained": True}
    config = {"budget_minutes": 3, "sets": ["stdlib"], "seeds": [seed], "systems": systems}
    config["backbone_frozen_args"] = frozen_args
    return {"config": config, "sets": {"stdlib": {"info": {}, "systems": {"minilm-ft": row}}}}


def test_merged_reports_ignore_frozen_settings_only_where_one_did_not_run_it(tmp_path):
    import json

    from quality import merge_reports

    paths = []
    for seed, systems, frozen in ((0, ["minilm-ft", "world-minilm-frozen"], "--lr 1e-3"), (1, ["minilm-ft"], "old")):
        paths.append(tmp_path / f"s{seed}.json")
        paths[-1].write_text(json.dumps(_report(seed, systems, frozen)))
    merged = merge_reports(paths, tmp_path / "merged.json")
    row = merged["sets"]["stdlib"]["systems"]["minilm-ft"]
    assert row["seeds"] == ["0", "1"] and row["mean"]["R@1"] == pytest.approx(0.55)
    paths[1].write_text(json.dumps(_report(1, ["minilm-ft", "world-minilm-frozen"], "old")))
    with pytest.raises(TextJepaError, match="backbone_frozen_args"):
        merge_reports(paths, tmp_path / "merged.json")
