"""Wikipedia articles -> paragraph lines, the rule and its fast form over Arrow's UTF-8 bytes.

The rule (`wikipedia_paragraphs`, on Python strings): join a batch's articles with blank lines; drop `\\r` and
NUL, make tabs spaces and break up `|||` (the latent reader's separator); split on blank lines (two newlines
with only `[ \\t\\r\\f\\v]` between); inner newlines become spaces; strip (str.strip: Unicode whitespace too);
keep paragraphs of at least WIKI_MIN_CHARS characters, counting the other non-empty ones as skipped
fragments; cut those over WIKI_MAX_CHARS characters at a word.

`wikipedia_paragraph_block` gives the same bytes without a Python string per article or paragraph: the batch
joined once as UTF-8 bytes, the newlines found by numpy, each paragraph a (start, end) pair stripped and
measured in bulk, and the kept ranges gathered into one block by Arrow's `take` (C++). Python touches only the
rare paragraphs the bulk pass cannot decide (Unicode whitespace at an edge, over WIKI_MAX_CHARS bytes).
Measured on 10 MB of article text: 12 ms against the string rule's 25 ms (docs/results.md, issue 23).
tests/test_prepare.py checks the two against the plainest statement of the rule on awkward text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from textjepa.data.lines import LineStats

WIKI_MIN_CHARS = 15  # shorter fragments are headings, captions and list debris
WIKI_MAX_CHARS = 2000  # a few paragraphs are whole tables run together; longer ones are cut at a word
FRAGMENT = f"fragment under {WIKI_MIN_CHARS} chars"
PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")


def _byte_table(values) -> np.ndarray:
    table = np.zeros(256, bool)
    table[list(values)] = True
    return table


# str.strip()'s ASCII whitespace (\t \n \v \f \r \x1c-\x1f, space); a paragraph break's inner [ \t\r\f\v].
_STRIPPED = _byte_table([9, 10, 11, 12, 13, 28, 29, 30, 31, 32])
_BLANK = _byte_table([9, 11, 12, 13, 32])
# Non-ASCII whitespace str.strip() removes (U+0085, U+00A0, U+1680, U+2000-200A, U+2028/9, U+202F, U+205F,
# U+3000): the lead bytes they start with, and the last bytes they end with. A paragraph whose edge holds such a
# byte is decided in Python.
_SPACE_LEAD = _byte_table([0xC2, 0xE1, 0xE2, 0xE3])
_SPACE_LAST = _byte_table([*range(0x80, 0x8B), 0x9F, 0xA0, 0xA8, 0xA9, 0xAF])
# Below this many bytes a non-ASCII paragraph may hold fewer than WIKI_MIN_CHARS characters (4 bytes at most each).
_UNSURE_BYTES = 4 * WIKI_MIN_CHARS
_STRIP_STEPS = 4  # edge bytes stripped in bulk; a longer run of whitespace at an edge is left to Python


def wikipedia_paragraphs(texts: Sequence[str | None], stats: LineStats) -> tuple[list[str], int]:
    """Articles -> (paragraphs, how many were capped), on Python strings.

    The whole batch is joined and split once, and each pass over the paragraphs is one comprehension:
    per-article and per-paragraph Python statements were the bottleneck. A single-character test
    (memchr) guards each multi-character search, which scans far slower.
    """
    big = "\n\n".join([t for t in texts if t])
    for bad, good in (("\r", ""), ("\t", " "), ("\x00", "")):
        if bad in big:
            big = big.replace(bad, good)
    if "|" in big and "|||" in big:
        big = big.replace("|||", "| | |")
    stripped = [part.replace("\n", " ").strip() for part in PARAGRAPH_BREAK.split(big)]
    kept = [paragraph for paragraph in stripped if len(paragraph) >= WIKI_MIN_CHARS]
    stats.skip(FRAGMENT, len(stripped) - stripped.count("") - len(kept))
    capped = 0
    if kept and max(map(len, kept)) > WIKI_MAX_CHARS:
        for i, paragraph in enumerate(kept):
            if len(paragraph) > WIKI_MAX_CHARS:
                kept[i] = paragraph[:WIKI_MAX_CHARS].rsplit(" ", 1)[0]
                capped += 1
    stats.used += len(kept)
    return kept, capped


def wikipedia_paragraph_block(column, stats: LineStats):
    """Articles as an Arrow string column -> (the paragraph lines as one UTF-8 block, each ending in a newline,
    how many lines, how many were capped); None for a column of another type (use `wikipedia_paragraphs`).

    The block is an Arrow buffer (bytes-like: write it as it is).
    """
    import pyarrow as pa

    if pa.types.is_string(column.type):
        offset_type = np.int32
    elif pa.types.is_large_string(column.type):
        offset_type = np.int64
    else:
        return None
    if column.null_count == len(column):
        return b"", 0, 0
    data, newlines = _joined_articles(column, offset_type)
    starts, ends = _paragraph_ranges(data, newlines)
    starts, ends = _strip_edges(data, starts, ends)
    lengths = _char_lengths(data, starts, ends)
    data[newlines] = ord(" ")
    undecided = _STRIPPED[data[starts]] | _STRIPPED[data[ends - 1]] | (ends - starts > WIKI_MAX_CHARS) | (lengths < 0)
    capped = _decide_in_python(data, starts, ends, lengths, np.flatnonzero(undecided))
    kept = lengths >= WIKI_MIN_CHARS
    stats.skip(FRAGMENT, int(np.count_nonzero((lengths > 0) & ~kept)))
    starts, ends = starts[kept], ends[kept]
    stats.used += len(starts)
    if not len(starts):
        return b"", 0, capped
    return _gather_lines(data, starts, ends), len(starts), capped


def _joined_articles(column, offset_type) -> tuple[np.ndarray, np.ndarray]:
    """(the articles' bytes, each followed by a blank line and cleaned as the rule says, in a writable array;
    where its newlines are). The blank line after the last article gives every paragraph a byte after it that is
    not part of it: where its line's newline goes.

    The buffers come from Arrow's memory pool, which keeps and reuses them from batch to batch; numpy's and
    Python's big temporaries came from fresh pages each time (~5,000 page faults per 10 MB, a sixth of the time).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    empty, blank_line = pa.scalar("", column.type), pa.scalar("\n\n", column.type)
    joined = pc.binary_join_element_wise(column, empty, blank_line)  # article + "\n\n" + "" per row; nulls: nothing
    offsets = np.frombuffer(joined.buffers()[1], offset_type)
    begin, end = int(offsets[joined.offset]), int(offsets[joined.offset + len(joined)])
    data = np.frombuffer(joined.buffers()[2], np.uint8)[begin:end]
    scratch = np.frombuffer(pa.allocate_buffer(len(data)), bool)
    controls = np.flatnonzero(np.less_equal(data, 13, out=scratch))  # newlines, tabs, CR, NUL (and \v \f)
    kinds = data[controls]
    if np.isin(kinds, (0, 13)).any() or _has_triple_pipe(data, scratch):  # rare: replacements that move bytes
        cleaned = data.tobytes().replace(b"\r", b"").replace(b"\t", b" ").replace(b"\x00", b"")
        data = np.frombuffer(bytearray(cleaned.replace(b"|||", b"| | |")), np.uint8)
        return data, np.flatnonzero(data == 10)
    data[controls[kinds == 9]] = ord(" ")
    return data, controls[kinds == 10]


def _has_triple_pipe(data: np.ndarray, scratch: np.ndarray) -> bool:
    if not np.equal(data, ord("|"), out=scratch).any():
        return False
    pipes = np.flatnonzero(scratch)
    return bool((pipes[2:] - pipes[:-2] == 2).any())


def _paragraph_ranges(data: np.ndarray, newlines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) byte offsets of the non-empty text between paragraph breaks."""
    left, right = newlines[:-1], newlines[1:]
    breaks = right == left + 1
    for k in np.flatnonzero(~breaks & _BLANK[data[left + 1]]).tolist():  # a blank line holding spaces: rare
        breaks[k] = bool(_BLANK[data[left[k] + 1 : right[k]]].all())
    starts = np.concatenate([[0], right[breaks] + 1])
    ends = np.concatenate([left[breaks], [len(data) - 1]])
    nonempty = ends > starts
    return starts[nonempty], ends[nonempty]


def _strip_edges(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Up to _STRIP_STEPS ASCII whitespace bytes off each edge, in bulk; ranges that become empty go."""
    for _ in range(_STRIP_STEPS):
        at_edge = np.flatnonzero(_STRIPPED[data[starts]])
        if not len(at_edge):
            break
        starts[at_edge] += 1
        nonempty = ends > starts
        starts, ends = starts[nonempty], ends[nonempty]
    for _ in range(_STRIP_STEPS):
        at_edge = np.flatnonzero(_STRIPPED[data[ends - 1]])
        if not len(at_edge):
            break
        ends[at_edge] -= 1
        nonempty = ends > starts
        starts, ends = starts[nonempty], ends[nonempty]
    return starts, ends


def _char_lengths(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Characters per range where they decide something; -1 where Python must look (a non-ASCII edge that may
    be whitespace). Long ranges keep their byte count: only the WIKI_MIN_CHARS test reads it, and the
    WIKI_MAX_CHARS test goes to Python by the byte count."""
    lengths = ends - starts
    if int(data.max(initial=0)) < 0x80:  # ASCII: a byte is a character
        return lengths
    unsure = np.flatnonzero((lengths >= WIKI_MIN_CHARS) & (lengths < _UNSURE_BYTES))
    if len(unsure):
        window = starts[unsure, None] + np.arange(_UNSURE_BYTES)
        inside = np.arange(_UNSURE_BYTES) < lengths[unsure, None]
        continuation = (data[np.minimum(window, len(data) - 1)] & 0xC0) == 0x80
        lengths[unsure] -= (continuation & inside).sum(axis=1)
    lengths[_SPACE_LEAD[data[starts]] | _SPACE_LAST[data[ends - 1]]] = -1
    return lengths


def _decide_in_python(data, starts, ends, lengths, which: np.ndarray) -> int:
    """Strip, measure and cap the ranges in `which` as the string rule does, in place; returns how many were
    capped. A capped paragraph is a prefix of its range, so it stays a range."""
    capped = 0
    for k in which.tolist():
        start, end = int(starts[k]), int(ends[k])
        raw = data[start:end].tobytes().decode("utf-8")
        paragraph = raw.lstrip()
        start += len(raw[: len(raw) - len(paragraph)].encode("utf-8"))
        paragraph = paragraph.rstrip()
        lengths[k] = len(paragraph)
        if len(paragraph) > WIKI_MAX_CHARS:
            paragraph = paragraph[:WIKI_MAX_CHARS].rsplit(" ", 1)[0]
            capped += 1
        starts[k], ends[k] = start, start + len(paragraph.encode("utf-8"))
    return capped


def _gather_lines(data: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """The ranges, each with a newline written on the byte after it, gathered into one buffer by Arrow's take:
    ranges and gaps alternate as the values of one binary array, and the even ones (the lines) are taken."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data[ends] = ord("\n")
    bounds = np.empty(2 * len(starts), np.int64)
    bounds[0::2], bounds[1::2] = starts, ends + 1
    pieces = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(bounds) - 1, [None, pa.py_buffer(bounds), pa.py_buffer(data)]
    )
    lines = pc.take(pieces, pa.array(np.arange(0, len(bounds), 2, dtype=np.int64)))
    size = int(np.frombuffer(lines.buffers()[1], np.int64)[len(lines)])
    return lines.buffers()[2][:size]
