"""Conversations as the world model reads them: OpenAI-style messages -> `User: ...\nAssistant: ...` text."""

from __future__ import annotations

from collections.abc import Sequence

from textjepa.errors import TextJepaError

ROLE_PREFIXES = {"user": "User: ", "assistant": "Assistant: "}


def as_messages(prompt: str | Sequence[dict]) -> list[dict]:
    """A bare prompt is one user message; a message list (OpenAI style) is used as it is."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def conversation_context(messages: Sequence[dict]) -> str:
    """The `User: ...\nAssistant: ...` form the world model was trained on (system turns are left out).

    A single user message that already starts with `User:` is taken as written.
    """
    turns = []
    for message in messages:
        prefix = ROLE_PREFIXES.get(message.get("role", ""))
        content = str(message.get("content") or "").strip()
        if prefix is None or not content:
            continue
        turns.append(content if content.startswith(("User:", "Assistant:")) else prefix + content)
    return "\n".join(turns)


def require_context(messages: Sequence[dict]) -> str:
    """The conversation's context text, or a one-line error when it has no text the world model reads."""
    context = conversation_context(messages)
    if not context.strip():
        raise TextJepaError("the prompt is empty")
    return context
