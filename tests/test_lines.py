from pathlib import Path

from textjepa.data.lines import LineStats, escape, iter_latent_texts, iter_world_pairs, split_fields, unescape


def write_bytes(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "data.txt"
    path.write_bytes(data)
    return path


def test_latent_uses_left_side_of_each_format(tmp_path):
    path = write_bytes(tmp_path, b"left one\tright one\nleft two|||right two\njust a plain line\n")
    stats = LineStats()
    assert list(iter_latent_texts(path, 1000, stats)) == ["left one", "left two", "just a plain line"]


def test_escaped_newline_becomes_a_newline(tmp_path):
    path = write_bytes(tmp_path, b"User: hi\\nContext: a paragraph\tanswer\\nsecond line\n")
    [pair] = list(iter_world_pairs(path, 1000, LineStats()))
    assert pair.context == "User: hi\nContext: a paragraph"
    assert pair.next_turn == "answer\nsecond line"
    assert pair.action == "reply"


def test_tab_wins_over_pipes_and_third_column_is_the_action():
    assert split_fields("a|||b\tc") == ["a|||b", "c"]
    assert split_fields("a|||b") == ["a", "b"]


def test_world_pairs_count_bad_lines_by_reason(tmp_path):
    data = (
        b"ctx one\tnext one\n"
        b"\n"
        b"no separator here\n"
        b"ctx|||\n"
        b"ctx two|||next two\n"
        b"\xff\xfe broken utf8\tnext\n"
        b"ctx three\tnext three\tclarify\n"
    )
    stats = LineStats()
    pairs = list(iter_world_pairs(write_bytes(tmp_path, data), 1000, stats))
    assert [(p.context, p.next_turn, p.action) for p in pairs] == [
        ("ctx one", "next one", "reply"),
        ("ctx two", "next two", "reply"),
        ("ctx three", "next three", "clarify"),
    ]
    assert stats.skipped == {"empty": 1, "no separator": 1, "empty side": 1, "undecodable": 1}


def test_overlong_line_is_skipped_without_reading_it_whole(tmp_path):
    huge = b"x" * (10 * 1024 * 1024)
    path = write_bytes(tmp_path, b"first good line\n" + huge + b"\nlast good line\n")
    stats = LineStats()
    assert list(iter_latent_texts(path, 1_000_000, stats)) == ["first good line", "last good line"]
    assert stats.skipped == {"too long": 1}


def test_binary_bytes_are_counted_not_fatal(tmp_path):
    path = write_bytes(tmp_path, bytes(range(256)) * 4)
    stats = LineStats()
    texts = list(iter_latent_texts(path, 1000, stats))
    assert stats.total_skipped >= 1
    assert all("\x00" not in t for t in texts)


def test_escape_round_trips_and_keeps_one_physical_line():
    text = "line one\nline\ttwo\r\nthree"
    escaped = escape(text)
    assert "\n" not in escaped and "\t" not in escaped
    assert unescape(escaped) == "line one\nline two\nthree"


def test_summary_names_reasons():
    stats = LineStats(used=3)
    stats.skip("empty", 2)
    assert stats.summary() == "used 3 lines, skipped 2 (empty: 2)"
