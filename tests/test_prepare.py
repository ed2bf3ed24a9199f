"""`prepare ultrachat|expert|jsonl|mix`, the seed's script names, and the writer's guarantees.

Hub-backed commands run the real CLI and `huggingface_hub` against the local fake Hub
(tests/fake_hub.py) serving each dataset's real parquet layout (tests/hub_fixtures.py).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, assert_user_error, cli_env, run_cli

from textjepa.config import PrepareJsonlConfig, PrepareMixConfig
from textjepa.data.hub import ROW_BATCH, describe_parquet_path, iter_local_batches, write_wikipedia_lines
from textjepa.data.lines import LineStats, iter_world_pairs
from textjepa.data.pairs import chat_pairs, html_to_text
from textjepa.data.prepare import prepare_jsonl, prepare_mix
from textjepa.data.wiki_paragraphs import PARAGRAPH_BREAK, WIKI_MAX_CHARS, WIKI_MIN_CHARS, wikipedia_paragraphs
from textjepa.data.writer import AtomicLineFile
from textjepa.errors import TextJepaError


@pytest.fixture
def env(hub, tmp_path) -> dict:
    environment = cli_env(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
    environment.pop("HF_TOKEN", None)
    return environment


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def assert_one_record_per_line(path: Path, columns: int = 2) -> None:
    for line in lines_of(path):
        assert line.count("\t") == columns - 1 and "\r" not in line, line


# ---------------------------------------------------------------- ultrachat


def test_prepare_ultrachat_seed_form(env, tmp_path):
    out = tmp_path / "uc.txt"
    result = run_cli("--prepare-ultrachat", out, "2", "2", "4", env=env)  # output, window, min tokens, rows
    assert result.returncode == 0, result.stderr
    lines = lines_of(out)
    assert len(lines) == 4 * 3  # three assistant turns per conversation
    answer = "with light,\\nwater and soil."
    assert lines[0] == f"User: Question 0 of chat 0: how do plants grow?\tAnswer 0 of chat 0: {answer}"
    assert lines[2] == (
        f"Assistant: Answer 1 of chat 0: {answer}\\nUser: Question 2 of chat 0: how do plants grow?"
        f"\tAnswer 2 of chat 0: {answer}"
    )  # a window of 2 turns
    assert "wrote 12 lines" in result.stdout
    assert_one_record_per_line(out)


def test_prepare_ultrachat_defaults_and_splits(env, tmp_path):
    result = run_cli("prepare", "ultrachat", "--no-progress", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = lines_of(tmp_path / "data" / "ultrachat_pairs.txt")  # the default output
    assert len(lines) == 10 * 3
    assert lines[2].startswith("User: Question 0 of chat 0")  # the default window of 6 keeps all turns
    assert "skipped 1 (no messages: 1)" in result.stdout
    test_split = run_cli("prepare", "ultrachat", tmp_path / "t.txt", "--split", "test_sft", env=env)
    assert test_split.returncode == 0 and len(lines_of(tmp_path / "t.txt")) == 9
    missing = run_cli("prepare", "ultrachat", tmp_path / "x.txt", "--split", "nope", env=env)
    assert_user_error(missing, "no split 'nope'", "train_sft")
    assert not (tmp_path / "x.txt").exists()


# ---------------------------------------------------------------- expert


def test_prepare_expert_sciq_with_and_without_support(env, tmp_path):
    out = tmp_path / "sciq.txt"
    result = run_cli("prepare", "expert", "--dataset", "sciq", "--output", out, env=env)
    assert result.returncode == 0, result.stderr
    lines = lines_of(out)
    assert len(lines) == 9
    assert lines[0] == (
        "User: What gas do plants absorb in experiment 0?\\nContext: Plants take in carbon dioxide.\\n"
        "Experiment 0 shows it.\tcarbon dioxide"
    )
    assert lines[8] == "User: What gas do plants absorb in experiment 8?\tcarbon dioxide"  # empty support
    bare = run_cli("prepare", "expert", "--dataset", "sciq", "--output", out, "--no-support", env=env)
    assert bare.returncode == 0 and not any("Context:" in line for line in lines_of(out))
    validation = run_cli("prepare", "expert", "--dataset", "sciq", "--output", out, "--split", "validation", env=env)
    assert validation.returncode == 0 and len(lines_of(out)) == 1


def test_prepare_expert_with_nothing_usable_writes_nothing(env, tmp_path):
    out = tmp_path / "sciq.txt"
    result = run_cli("prepare", "expert", "--dataset", "sciq", "--output", out, "--min-answer-words", "3", env=env)
    assert_user_error(result, "no usable", "too few words: 9")
    assert not out.exists() and not list(tmp_path.glob(".sciq.txt*"))


def test_prepare_expert_squad_skips_unanswerable(env, tmp_path):
    out = tmp_path / "squad.txt"
    result = run_cli("prepare", "expert", "--dataset", "squad", "--output", out, env=env)
    assert result.returncode == 0, result.stderr
    lines = lines_of(out)
    assert len(lines) == 6 and "unanswerable: 1" in result.stdout
    assert lines[0] == (
        "User: In what country is Normandy located? (0)\\nContext: The Normans were the people who in the "
        "10th and 11th centuries gave their name to Normandy.\tFrance"
    )


def test_prepare_expert_natural_questions_short_then_long_answers(hub, env, tmp_path):
    out = tmp_path / "nq.txt"
    before = len(hub.requests)
    few = run_cli("prepare", "expert", "--dataset", "natural_questions", "--output", out, "--max-rows", "2", env=env)
    assert few.returncode == 0 and len(lines_of(out)) == 2
    fetched = [p for _, p in hub.requests[before:] if "/resolve/" in p]
    assert all("default/train-00000-of-00002" in p for p in fetched), fetched  # later files are never fetched

    result = run_cli("prepare", "expert", "--dataset", "natural_questions", "--output", out, env=env)
    assert result.returncode == 0, result.stderr
    lines = lines_of(out)
    assert lines[0] == "User: where is the eiffel tower 0\tParis"
    no_short_answer = "User: where is the eiffel tower 3\tThe Eiffel Tower is in Paris , France ."
    assert no_short_answer in lines
    assert len(lines) == 5 and "no answer: 1" in result.stdout


def test_prepare_expert_stackexchange_best_answer_html_stripped(env, tmp_path):
    out = tmp_path / "se.txt"
    result = run_cli("prepare", "expert", "--dataset", "stackexchange", "--output", out, env=env)
    assert result.returncode == 0, result.stderr
    lines = lines_of(out)
    question = "User: How do I reverse a list in Python? (#{})\\nxs = [1, 2]"
    assert lines == [
        question.format(1) + "\tUse reversed(xs) or slicing:\\nxs[::-1]",
        question.format(2) + "\tCall xs.reverse() & done.",  # the higher score beats the accepted answer
        question.format(4) + "\t- one\\n- two",
    ]
    assert "no answers: 1" in result.stdout


def test_prepare_expert_bad_arguments(env, tmp_path):
    unknown = run_cli("prepare", "expert", "--dataset", "wikihow", "--output", tmp_path / "x.txt", env=env)
    assert_user_error(unknown, "invalid choice", "sciq")
    zero = run_cli("prepare", "expert", "--dataset", "sciq", "--max-rows", "0", env=env)
    assert_user_error(zero, "--max-rows must be at least 1")


def test_output_directory_is_created_or_refused(hub, env, tmp_path):
    nested = tmp_path / "new" / "deeper" / "sciq.txt"
    made = run_cli("prepare", "expert", "--dataset", "sciq", "--output", nested, env=env)
    assert made.returncode == 0 and len(lines_of(nested)) == 9
    blocker = tmp_path / "somefile"
    blocker.write_text("not a directory\n")
    before = len(hub.requests)
    refused = run_cli("prepare", "expert", "--dataset", "sciq", "--output", blocker / "out.txt", env=env)
    assert_user_error(refused, "cannot create the directory", "somefile")
    assert hub.requests[before:] == []  # refused before any download


def test_seed_expert_script_runs_from_a_checkout(env, tmp_path):
    env = dict(env)
    env.pop("PYTHONPATH")  # the script finds its own package
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "prepare_expert_pairs.py"),
            "--dataset",
            "sciq",
            "--output",
            "data/sciq_pairs.txt",
            "--max_rows",
            "3",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(lines_of(tmp_path / "data" / "sciq_pairs.txt")) == 3


# ---------------------------------------------------------------- jsonl


def write_shards(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    good = {
        "context": "User: What is\ta prime?\nContext: numbers",
        "response": "A number with\nexactly two divisors.",
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"context": "only a context"}),
        json.dumps({"context": "c", "response": 42}),
        json.dumps({"context": "c", "response": "word " * 300}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"context": "User: Hi", "response": "Hello there."}),
    ]
    (root / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "sub" / "b.json").write_text(json.dumps({"context": "User: Sky?", "response": "Blue."}) + "\n")
    (root / "notes.txt").write_text(json.dumps({"context": "ignored", "response": "ignored"}) + "\n")


def test_prepare_jsonl_converts_and_counts(tmp_path):
    write_shards(tmp_path / "shards")
    out = tmp_path / "pairs.txt"
    result = run_cli("prepare", "jsonl", "--input-dir", tmp_path / "shards", "--output", out)
    assert result.returncode == 0, result.stderr
    assert lines_of(out) == [
        "User: What is a prime?\\nContext: numbers\tA number with\\nexactly two divisors.",
        "User: Hi\tHello there.",
        "User: Sky?\tBlue.",
    ]
    for reason in (
        "bad json: 1",
        "missing context or response: 1",
        "context or response not text: 1",
        "too many tokens: 1",
        "not a json object: 1",
        "empty: 1",
    ):
        assert reason in result.stdout, result.stdout
    # Read back as the world model reads it: the escapes give back the original text.
    pairs = list(iter_world_pairs(out, 1 << 20, LineStats()))
    assert pairs[0].context == "User: What is a prime?\nContext: numbers"
    assert pairs[0].next_turn == "A number with\nexactly two divisors."


def test_prepare_jsonl_missing_or_empty_directory(tmp_path):
    missing = run_cli("prepare", "jsonl", "--input-dir", tmp_path / "nope", "--output", tmp_path / "o.txt")
    assert_user_error(missing, "not found", '"context"', '"response"')
    (tmp_path / "empty").mkdir()
    empty = run_cli("prepare", "jsonl", "--input-dir", tmp_path / "empty", "--output", tmp_path / "o.txt")
    assert_user_error(empty, "no *.jsonl or *.json files", "one object per line")
    assert not (tmp_path / "o.txt").exists()


def test_seed_jsonl_script_with_underscore_flags(tmp_path):
    write_shards(tmp_path / "shards")
    env = cli_env()
    env.pop("PYTHONPATH")
    result = subprocess.run(
        [
            sys.executable,
            "scripts/convert_jsonl_context_response_to_tsv.py",
            "--input_dir",
            str(tmp_path / "shards"),
            "--output",
            str(tmp_path / "expert_pairs.txt"),
            "--max_tokens",
            "2",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert lines_of(tmp_path / "expert_pairs.txt") == ["User: Hi\tHello there.", "User: Sky?\tBlue."]


def test_jsonl_token_bounds_are_checked(tmp_path):
    with pytest.raises(TextJepaError, match="max-tokens"):
        prepare_jsonl(
            PrepareJsonlConfig(input_dir=str(tmp_path), output=str(tmp_path / "o"), min_tokens=5, max_tokens=2)
        )


# ---------------------------------------------------------------- mix


@pytest.fixture
def two_files(tmp_path) -> tuple[Path, Path]:
    chat, expert = tmp_path / "chat.txt", tmp_path / "expert.txt"
    chat.write_text("".join(f"User: hi {i}\thello {i}\n" for i in range(50)), encoding="utf-8")
    expert.write_text("".join(f"User: q {i}\\nContext: c\ta {i}\n" for i in range(30)) + "\n", encoding="utf-8")
    return chat, expert


def test_prepare_mix_concatenates_in_order(two_files, tmp_path):
    chat, expert = two_files
    out = tmp_path / "mix.txt"
    result = run_cli("prepare", "mix", "--output", out, chat, expert)
    assert result.returncode == 0, result.stderr
    assert lines_of(out) == lines_of(chat) + lines_of(expert)[:-1]  # the blank line is skipped and counted
    assert "wrote 80 lines, skipped 1 (empty: 1)" in result.stdout


def test_prepare_mix_shuffle_is_deterministic(two_files, tmp_path):
    chat, expert = two_files
    outputs = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        result = run_cli("prepare", "mix", "--output", tmp_path / name, chat, expert, "--shuffle", "--seed", seed)
        assert result.returncode == 0, result.stderr
        outputs[name] = lines_of(tmp_path / name)
    everything = sorted(lines_of(chat) + lines_of(expert)[:-1])
    assert sorted(outputs["a"]) == everything
    assert outputs["a"] == outputs["b"] and outputs["a"] != outputs["c"]
    assert outputs["a"] != everything and outputs["a"][:50] != lines_of(chat)


def test_mix_shuffle_through_many_buckets(two_files, tmp_path):
    """Tiny buckets force the out-of-memory path: many bucket files, each shuffled on its own."""
    chat, expert = two_files
    config = PrepareMixConfig(
        output=str(tmp_path / "m1"),
        inputs=[str(chat), str(expert)],
        shuffle=True,
        seed=3,
        bucket_bytes=200,
        progress=False,
    )
    prepare_mix(config)
    first = lines_of(tmp_path / "m1")
    prepare_mix(PrepareMixConfig(**{**vars(config), "output": str(tmp_path / "m2")}))
    assert first == lines_of(tmp_path / "m2")
    assert sorted(first) == sorted(lines_of(chat) + lines_of(expert)[:-1])
    assert not list(tmp_path.glob(".mix-buckets-*"))  # bucket files are cleaned up


def test_prepare_mix_missing_input(tmp_path):
    result = run_cli("prepare", "mix", "--output", tmp_path / "o.txt", tmp_path / "absent.txt")
    assert_user_error(result, "input file not found")


# ---------------------------------------------------------------- writer and converters (in process)


def test_fields_are_sanitised_to_one_line_each(tmp_path):
    out = tmp_path / "o.txt"
    with AtomicLineFile(out) as writer:
        writer.write_record(["a\tb\r\nc", " d\re\n\x00f "])
        writer.commit()
    assert out.read_text() == "a b\\nc\td\\ne\\nf\n"


def test_uncommitted_or_empty_output_leaves_nothing(tmp_path):
    out = tmp_path / "o.txt"
    out.write_text("old complete file\n")
    with pytest.raises(RuntimeError), AtomicLineFile(out) as writer:
        writer.write_record(["x", "y"])
        raise RuntimeError("interrupted")
    assert out.read_text() == "old complete file\n"
    with pytest.raises(TextJepaError, match="no usable"), AtomicLineFile(tmp_path / "empty.txt") as writer:
        writer.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.txt"]


def test_pages_are_synced_while_writing_and_the_file_is_whole(tmp_path):
    """Past early_sync_bytes the written pages go to disk on a thread (os.fdatasync) while writing goes on; every
    way of writing counts its bytes, and the committed file is exactly what was written."""
    out = tmp_path / "o.txt"
    synced: list[int] = []
    with AtomicLineFile(out, early_sync_bytes=64) as writer:
        real_sync = writer._sync_written
        writer._sync_written = lambda descriptor: (synced.append(writer.tmp.stat().st_size), real_sync(descriptor))
        for i in range(20):
            writer.write_clean_line(f"line {i:03d}\tx")
        writer.write_clean_block([f"block {i:03d}\ty" for i in range(20)])
        writer.write_clean_bytes(b"".join(f"bytes {i:03d}\tz\n".encode() for i in range(20)), 20)
        writer.commit()
    expected = [f"line {i:03d}\tx" for i in range(20)] + [f"block {i:03d}\ty" for i in range(20)]
    assert lines_of(out) == expected + [f"bytes {i:03d}\tz" for i in range(20)]
    assert writer.lines == 60
    # Synced during the writing (the buffer flushed first: the file already held those bytes), not only at the end.
    assert synced and 0 < synced[0] < out.stat().st_size


def test_a_failed_sync_while_writing_fails_the_commit_and_leaves_the_old_file(tmp_path, monkeypatch):
    # A disk that fails its writeback (EIO) cannot be made here: os.fdatasync fails instead, as it would report it.
    out = tmp_path / "o.txt"
    out.write_text("old complete file\n")

    def failing_sync(descriptor: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_sync)
    with pytest.raises(OSError, match="Input/output error"), AtomicLineFile(out, early_sync_bytes=16) as writer:
        for i in range(10):
            writer.write_clean_line(f"line {i}\tx")
        writer.commit()
    assert out.read_text() == "old complete file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.txt"]  # the partial file went too


def test_stale_temporary_files_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "o.txt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".o.txt.tmp-{int(dead.stdout)}"
    live = tmp_path / f".o.txt.tmp-{os.getppid()}"  # a running process (pytest's parent) that holds the lock
    stale.write_text("partial")
    live.write_text("someone else's work in progress")
    code = "import sys, time; from pathlib import Path; from textjepa.io import lock_writer; "
    code += "lock_writer(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(live)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with AtomicLineFile(out) as writer:
            writer.write_record(["a", "b"])
            writer.commit()
        assert not stale.exists() and live.exists()
    finally:
        holder.kill()
        holder.wait()


def test_chat_pairs_window_and_roles():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "  "},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    stats = LineStats()
    assert list(chat_pairs(messages, 2, stats)) == [
        ("System: Be brief.\nUser: Hi", "Hello!"),
        ("Assistant: Hello!\nUser: Bye", "Goodbye."),
    ]
    assert list(chat_pairs([{"role": "assistant", "content": "Hi"}], 6, stats)) == []
    assert stats.skipped["assistant turn without context"] == 1


def test_html_to_text():
    html = "<p>First &amp; <b>bold</b></p><ul><li>a</li><li>b</li></ul><pre><code>x = 1\ny = 2</code></pre>"
    assert html_to_text(html) == "First & bold\n- a\n- b\nx = 1\ny = 2"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("20231101.en/train-00000-of-00041.parquet", ("20231101.en", "train")),
        ("data/train_sft-00000-of-00003-a3ecf92756993583.parquet", ("default", "train_sft")),
        ("data/stackoverflow.com/train-00000-of-00001.parquet", ("default", "train")),
        ("squad_v2/validation-00000-of-00001.parquet", ("squad_v2", "validation")),
        ("default/train/0000.parquet", ("default", "train")),
        ("en/partial-train/0003.parquet", ("en", "train")),
        ("train.parquet", ("default", "train")),
    ],
)
def test_hub_file_layouts(path, expected):
    assert describe_parquet_path(path) == expected


def test_wikipedia_paragraph_rules():
    stats = LineStats()
    long = "word " * 600
    text = "Intro line one\nline two of it.\n\nHistory\n \nA\ttabbed paragraph ||| here.\n\n\n" + long
    paragraphs, capped = wikipedia_paragraphs([text, None, ""], stats)
    assert paragraphs[:2] == ["Intro line one line two of it.", "A tabbed paragraph | | | here."]
    assert len(paragraphs[2]) <= 2000 and paragraphs[2].endswith("word") and capped == 1
    assert stats.used == 3 and stats.skipped["fragment under 15 chars"] == 1


def simple_wikipedia_paragraphs(texts: list[str | None], stats: LineStats) -> list[str]:
    """The rules in their plainest form (what hub.wikipedia_paragraphs did before it was made fast): join the
    articles with blank lines, clean, split on every blank line, one statement per paragraph."""
    big = "\n\n".join(t for t in texts if t)
    big = big.replace("\r", "").replace("\t", " ").replace("\x00", "").replace("|||", "| | |")
    kept = []
    for part in PARAGRAPH_BREAK.split(big):
        paragraph = part.replace("\n", " ").strip()
        if len(paragraph) < WIKI_MIN_CHARS:
            stats.skip(f"fragment under {WIKI_MIN_CHARS} chars", int(bool(paragraph)))
            continue
        if len(paragraph) > WIKI_MAX_CHARS:
            paragraph = paragraph[:WIKI_MAX_CHARS].rsplit(" ", 1)[0]
        kept.append(paragraph)
    stats.used += len(kept)
    return kept


AWKWARD_PIECES = [
    "Plain sentence of words here.", "\n", "\n\n", "\n \n", "\n\t\n", "\n\f\v\n", "\r\n", "\r\n\r\n", "\r", "\t",
    "\x00", "|||", "||", "|", " ", "  ", "\u00a0", "\u2003", "\u3000", "\x1c", "\x85", "\u2028", "caf\u00e9 na\u00efve",
    "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0", "emoji \U0001f600 and \U0001f4a1", "e\u0301", "\\n literal",
    "Short", "x" * 2100, ("word " * 450).strip(), "",
]  # fmt: skip


def awkward_articles(count: int, seed: int) -> list[str | None]:
    import random

    rng = random.Random(seed)
    articles: list[str | None] = [None, "", "\n\n", "x" * 3000, "Heading\n\nA paragraph long enough to be kept."]
    while len(articles) < count:
        articles.append("".join(rng.choice(AWKWARD_PIECES) for _ in range(rng.randint(1, 40))))
        if rng.random() < 0.05:
            articles.append(None)
    return articles


@pytest.mark.parametrize("arrow_type", ["string", "large_string", "string_view"])
def test_fast_wikipedia_lines_are_byte_identical_to_the_simple_rules(tmp_path, arrow_type):
    """The real parquet -> line-file path against the plain rules, on articles built from awkward pieces:
    embedded newlines, tabs, CR, NUL, pipes, empty and null rows, non-ASCII whitespace, unicode, long runs.
    string and large_string columns go through the byte path (wiki_paragraphs.wikipedia_paragraph_block),
    string_view through the rule on Python strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    articles = awkward_articles(2 * ROW_BATCH + 300, seed=7)  # three batches, the last partial
    source = tmp_path / "train-00000-of-00001.parquet"
    column = pa.array(articles, getattr(pa, arrow_type)())
    pq.write_table(pa.table({"text": column}), source, row_group_size=700)
    fast_stats, simple_stats = LineStats(), LineStats()
    out = tmp_path / "lines.txt"
    with AtomicLineFile(out) as writer:
        capped = write_wikipedia_lines(iter_local_batches([source], ["text"]), writer, fast_stats)
        writer.commit()
    expected = b"".join(
        (
            "".join(line + "\n" for line in simple_wikipedia_paragraphs(articles[i : i + ROW_BATCH], simple_stats))
        ).encode("utf-8")
        for i in range(0, len(articles), ROW_BATCH)
    )
    assert out.read_bytes() == expected
    assert fast_stats == simple_stats and capped > 0 and fast_stats.skipped["fragment under 15 chars"] > 0
    assert fast_stats.used == writer.lines == expected.count(b"\n") > 1000


def test_prepare_jsonl_skips_a_deeply_nested_line(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    nested = '{"context": ' + "[" * 100_000 + "]" * 100_000 + ', "response": "x"}'
    good = json.dumps({"context": "User: Sky?", "response": "Blue."})
    (shards / "a.jsonl").write_text(nested + "\n" + good + "\n")
    out = tmp_path / "pairs.txt"
    result = run_cli("prepare", "jsonl", "--input-dir", shards, "--output", out)
    assert result.returncode == 0, result.stderr
    assert lines_of(out) == ["User: Sky?\tBlue."] and "bad json: 1" in result.stdout, result.stdout


def test_data_dir_that_is_a_file_is_one_error(tmp_path, hub):
    blocker = tmp_path / "somefile"
    blocker.write_text("not a directory\n")
    data = tmp_path / "lines.txt"
    data.write_text("one line of text here\n" * 50)
    for data_dir in (blocker, blocker / "sub"):
        assert_user_error(run_cli("latent", data, "--data-dir", data_dir, "--out-dir", tmp_path / "o"), "--data-dir")
        assert_user_error(run_cli("prepare", "hub", "hub:some/dataset", "--data-dir", data_dir), "--data-dir")
