"""Dataset rows -> `context -> next_turn` pairs, one converter per known dataset.

Pure functions over the row dicts that pyarrow gives for each dataset's real parquet schema; no
downloading or writing here (hub.py fetches, writer.py writes). A converter yields the pairs of a
row and counts a row it cannot use in `stats` with the reason.

- ultrachat (HuggingFaceH4/ultrachat_200k, split train_sft): for each assistant turn, up to N previous
  turns as `User: ...` / `Assistant: ...` lines -> that turn.
- sciq (allenai/sciq): `User: <question>\\nContext: <support>` -> correct_answer.
- squad (rajpurkar/squad_v2): `User: <question>\\nContext: <paragraph>` -> first answer; unanswerable
  questions are skipped.
- natural_questions (google-research-datasets/natural_questions): `User: <question>` -> the short
  answer, or the long answer's text (its non-HTML tokens) when there is no short answer.
- stackexchange (HuggingFaceH4/stack-exchange-preferences): `User: <question>` -> the highest-scored
  answer (the accepted one wins a tie), HTML stripped from both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser

from textjepa.data.lines import LineStats

Pair = tuple[str, str]

# Who speaks, as the seed's contexts write it. ShareGPT-style `from` values map onto the same names.
SPEAKERS = {
    "user": "User",
    "human": "User",
    "assistant": "Assistant",
    "gpt": "Assistant",
    "bot": "Assistant",
    "model": "Assistant",
    "system": "System",
}


@dataclass(frozen=True)
class PairOptions:
    context_window: int = 6  # chat: previous turns kept in the context
    min_context_words: int = 1
    min_reply_words: int = 1
    no_support: bool = False  # SciQ / SQuAD: leave out the `Context:` paragraph


def word_count(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------- chat


def chat_turns(messages: Iterable[dict] | None) -> list[tuple[str, str]]:
    """(speaker, text) for each non-empty message; `role`/`content` or ShareGPT `from`/`value`."""
    turns = []
    for message in messages or ():
        if not isinstance(message, dict):
            continue
        role = str(message.get("role") or message.get("from") or "").strip().lower()
        text = message.get("content")
        if text is None:
            text = message.get("value")
        if not isinstance(text, str) or not text.strip():
            continue
        turns.append((SPEAKERS.get(role, role.capitalize() or "User"), text.strip()))
    return turns


def chat_pairs(messages: Iterable[dict] | None, context_window: int, stats: LineStats) -> Iterator[Pair]:
    """For each assistant turn: the previous `context_window` turns -> that turn."""
    turns = chat_turns(messages)
    if not turns:
        stats.skip("no messages")
        return
    for i, (speaker, text) in enumerate(turns):
        if speaker != "Assistant":
            continue
        history = turns[max(0, i - context_window) : i]
        if not history:
            stats.skip("assistant turn without context")
            continue
        yield "\n".join(f"{who}: {said}" for who, said in history), text


def _ultrachat(row: dict, options: PairOptions, stats: LineStats) -> Iterator[Pair]:
    yield from chat_pairs(row.get("messages"), options.context_window, stats)


# ---------------------------------------------------------------- expert Q&A


def _question_context(question: str, support: str | None, options: PairOptions) -> str:
    context = f"User: {question.strip()}"
    if support and support.strip() and not options.no_support:
        context += f"\nContext: {support.strip()}"
    return context


def _sciq(row: dict, options: PairOptions, stats: LineStats) -> Iterator[Pair]:
    question, answer = row.get("question") or "", row.get("correct_answer") or ""
    if not question.strip() or not answer.strip():
        stats.skip("missing question or answer")
        return
    yield _question_context(question, row.get("support"), options), answer


def _squad(row: dict, options: PairOptions, stats: LineStats) -> Iterator[Pair]:
    question = row.get("question") or ""
    answers = [t for t in ((row.get("answers") or {}).get("text") or []) if t and t.strip()]
    if not answers:
        stats.skip("unanswerable")
        return
    if not question.strip():
        stats.skip("missing question or answer")
        return
    yield _question_context(question, row.get("context"), options), answers[0]


def _natural_questions(row: dict, options: PairOptions, stats: LineStats) -> Iterator[Pair]:
    """Annotations are stored as a struct of lists (the `datasets` encoding of a sequence of dicts)."""
    question = ((row.get("question") or {}).get("text") or "").strip()
    if not question:
        stats.skip("missing question or answer")
        return
    annotations = row.get("annotations") or {}
    for short in annotations.get("short_answers") or []:
        texts = [t.strip() for t in (short or {}).get("text") or [] if t and t.strip()]
        if texts:
            yield f"User: {question}", ", ".join(texts)
            return
    tokens = ((row.get("document") or {}).get("tokens")) or {}
    words, is_html = tokens.get("token") or [], tokens.get("is_html") or []
    for long_answer in annotations.get("long_answer") or []:
        start, end = (long_answer or {}).get("start_token", -1), (long_answer or {}).get("end_token", -1)
        if start is None or end is None or start < 0 or end <= start:
            continue
        text = " ".join(
            w for w, html in zip(words[start:end], is_html[start:end], strict=False) if not html and w.strip()
        )
        if text:
            yield f"User: {question}", text
            return
    stats.skip("no answer")


class _HtmlText(HTMLParser):
    """Text of an HTML fragment; block elements become line breaks, list items get a dash."""

    BLOCKS = {
        "p",
        "div",
        "br",
        "li",
        "ul",
        "ol",
        "pre",
        "blockquote",
        "tr",
        "table",
        "hr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.BLOCKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html or "")
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _stackexchange(row: dict, options: PairOptions, stats: LineStats) -> Iterator[Pair]:
    question = html_to_text(row.get("question") or "")
    answers = [a for a in row.get("answers") or [] if a and (a.get("text") or "").strip()]
    if not question:
        stats.skip("missing question or answer")
        return
    if not answers:
        stats.skip("no answers")
        return
    best = max(answers, key=lambda a: (a.get("pm_score") or 0, bool(a.get("selected"))))
    yield f"User: {question}", html_to_text(best["text"])


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class PairSource:
    name: str
    repo_id: str
    split: str
    config: str | None  # None: the dataset's only (or default) config
    columns: tuple[str, ...]  # parquet columns read; nested paths select sub-fields only
    convert: Callable[[dict, PairOptions, LineStats], Iterator[Pair]]


ULTRACHAT = PairSource("ultrachat", "HuggingFaceH4/ultrachat_200k", "train_sft", None, ("messages",), _ultrachat)
EXPERT_SOURCES: dict[str, PairSource] = {
    "sciq": PairSource("sciq", "allenai/sciq", "train", None, ("question", "correct_answer", "support"), _sciq),
    "squad": PairSource("squad", "rajpurkar/squad_v2", "train", None, ("question", "context", "answers"), _squad),
    "natural_questions": PairSource(
        "natural_questions",
        "google-research-datasets/natural_questions",
        "train",
        "default",
        # document.html is most of each row and not needed: read the tokens only.
        ("question.text", "annotations", "document.tokens.token", "document.tokens.is_html"),
        _natural_questions,
    ),
    "stackexchange": PairSource(
        "stackexchange",
        "HuggingFaceH4/stack-exchange-preferences",
        "train",
        None,
        ("question", "answers"),
        _stackexchange,
    ),
}


def source_for_repo(repo_id: str) -> PairSource | None:
    """The converter for a hub dataset id that `prepare` knows, if any."""
    for source in (ULTRACHAT, *EXPERT_SOURCES.values()):
        if source.repo_id.lower() == repo_id.lower():
            return source
    return None


def convert_rows(rows: Iterable[dict], source: PairSource, options: PairOptions, stats: LineStats) -> Iterator[Pair]:
    """All pairs of `rows` that pass the word-count limits; the others are counted as skipped."""
    for row in rows:
        for context, reply in source.convert(row, options, stats):
            if word_count(context) < options.min_context_words or word_count(reply) < options.min_reply_words:
                stats.skip("too few words")
                continue
            yield context, reply
