"""The line formats of the seed's DATA_FORMATS.md.

latent / JEPA:  `context<TAB>response`, `context|||response` or a plain line -> the left side only.
world model:    `context<TAB>next_turn` or `context|||next_turn` (optional third column: action).
Inside a field the two characters `\\n` stand for a newline. Bad lines are skipped and counted,
never fatal; a file with no usable line at all is a clear error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from textjepa.data.text import NotText, checked_text
from textjepa.errors import TextJepaError

TAB = "\t"
# The action of a pair whose line names none (the world model's only action unless the data names others).
DEFAULT_ACTION = "reply"
PIPES = "|||"
ESCAPED_NEWLINE = "\\n"
_READ_CHUNK = 1 << 16


@dataclass
class LineStats:
    """How many lines were used and why the others were skipped."""

    used: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.skipped[reason] += count

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self, verb: str = "used", what: str = "lines") -> str:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        head = f"{verb} {self.used} {what}, skipped {self.total_skipped}"
        return head + (f" ({reasons})" if reasons else "")

    def to_dict(self) -> dict:
        return {"used": self.used, "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, data: dict) -> LineStats:
        return cls(used=int(data["used"]), skipped=Counter(data.get("skipped", {})))


def unescape(field_text: str) -> str:
    return field_text.replace(ESCAPED_NEWLINE, "\n")


def escape(field_text: str) -> str:
    """The inverse used by writers: one record stays one physical line, fields never hold a TAB."""
    return field_text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", ESCAPED_NEWLINE).replace(TAB, " ")


def split_fields(line: str) -> list[str]:
    """TAB wins over `|||` so that a `|||` inside a TAB-separated field stays text."""
    if TAB in line:
        return line.split(TAB)
    if PIPES in line:
        return line.split(PIPES)
    return [line]


def open_line_file(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise TextJepaError(f"data file not found: {path}")
    if path.is_dir():
        raise TextJepaError(f"data path is a directory, expected a line file: {path}")
    try:
        return path.open("rb")
    except OSError as exc:
        raise TextJepaError(f"cannot read data file {path}: {exc.strerror}") from exc


def iter_decoded_lines(path: str | Path, max_line_bytes: int, stats: LineStats) -> Iterator[str]:
    """Stream lines as text. Memory stays bounded by max_line_bytes even for a file with no newline."""
    with open_line_file(path) as handle:
        while True:
            raw = handle.readline(max_line_bytes + 1)
            if not raw:
                return
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                # Too long: drop the rest of this physical line without holding it in memory.
                while True:
                    rest = handle.readline(_READ_CHUNK)
                    if not rest or rest.endswith(b"\n"):
                        break
                stats.skip("too long")
                continue
            try:
                text = checked_text(raw)
            except NotText:
                stats.skip("undecodable")
                continue
            if "\x00" in text:
                stats.skip("undecodable")
                continue
            text = text.rstrip("\r\n")
            if not text.strip():
                stats.skip("empty")
                continue
            yield text


def iter_latent_texts(path: str | Path, max_line_bytes: int, stats: LineStats) -> Iterator[str]:
    """Texts for JEPA pretraining: the left side of each line (the whole line without separator)."""
    for line in iter_decoded_lines(path, max_line_bytes, stats):
        left = unescape(split_fields(line)[0]).strip()
        if not left:
            stats.skip("empty")
            continue
        yield left


@dataclass(frozen=True)
class WorldPair:
    context: str
    next_turn: str
    action: str = DEFAULT_ACTION


def iter_world_pairs(path: str | Path, max_line_bytes: int, stats: LineStats) -> Iterator[WorldPair]:
    """context -> next_turn pairs; a third column, if present, is the action label."""
    for line in iter_decoded_lines(path, max_line_bytes, stats):
        fields = split_fields(line)
        if len(fields) < 2:
            stats.skip("no separator")
            continue
        if len(fields) > 3:
            stats.skip("too many columns")
            continue
        context, next_turn = unescape(fields[0]).strip(), unescape(fields[1]).strip()
        if not context or not next_turn:
            stats.skip("empty side")
            continue
        action = fields[2].strip() if len(fields) == 3 and fields[2].strip() else DEFAULT_ACTION
        yield WorldPair(context, next_turn, action)


def require_usable(stats: LineStats, path: str | Path, what: str) -> None:
    if stats.used == 0:
        detail = f" ({stats.summary()})" if stats.total_skipped else " (the file is empty)"
        raise TextJepaError(f"no usable {what} in {path}{detail}")
