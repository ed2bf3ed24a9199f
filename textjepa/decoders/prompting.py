"""Prompts for the LLM decoders: data contexts as chat messages, the chat template, the text form of
the conditioning (the original's "chunks=[...]"), and left truncation to the decoder's context.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from textjepa.errors import TextJepaError

COND_FORMATS = ("chunks", "stats", "both")
CHUNKS = 8
_ROLE_LINE = re.compile(r"^(User|Assistant|System):\s?", re.IGNORECASE)
_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


def context_messages(context: str) -> list[dict]:
    """A data context (`User: ...\\nAssistant: ...` lines, the world model's form) as chat messages.

    Lines that do not start a turn (e.g. `Context: ...`) belong to the turn before them; text
    before any role marker is the user's.
    """
    messages: list[dict] = []
    for line in context.split("\n"):
        match = _ROLE_LINE.match(line)
        if match:
            messages.append({"role": _ROLES[match.group(1).lower()], "content": line[match.end() :]})
        elif messages:
            messages[-1]["content"] += "\n" + line
        else:
            messages.append({"role": "user", "content": line})
    return [{"role": m["role"], "content": m["content"].strip()} for m in messages if m["content"].strip()] or [
        {"role": "user", "content": context.strip()}
    ]


def chat_prompt_text(tokenizer, messages: Sequence[dict]) -> str:
    """The tokenizer's chat template with the generation prompt; a plain transcript if it has none."""
    clean = [{"role": str(m.get("role", "user")), "content": str(m.get("content") or "")} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja errors, e.g. a template that rejects a role order
            raise TextJepaError(f"the decoder's chat template rejected the messages: {exc}") from exc
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in clean]
    return "\n".join(lines) + "\nAssistant:"


def conditioning_text(vector: torch.Tensor, fmt: str) -> str:
    """The original's text form of the conditioning vector: `chunks` (8 chunk means), `stats`
    (mean/std/l2/head) or `both`."""
    if fmt not in COND_FORMATS:
        raise TextJepaError(f"JEPA_DECODER_COND_FORMAT must be one of {', '.join(COND_FORMATS)}, got {fmt!r}")
    v = vector.detach().float().flatten().cpu()
    parts = []
    if fmt in ("chunks", "both"):
        means = [float(c.mean()) for c in torch.tensor_split(v, min(CHUNKS, max(1, len(v))))]
        parts.append("chunks=[" + ", ".join(f"{m:+.3f}" for m in means) + "]")
    if fmt in ("stats", "both"):
        head = ", ".join(f"{float(x):+.3f}" for x in v[:4])
        std = float(v.std()) if len(v) > 1 else 0.0
        parts.append(f"mean={float(v.mean()):+.4f} std={std:.4f} l2={float(v.norm()):.4f} head=[{head}]")
    return " ".join(parts)


def with_text_conditioning(messages: Sequence[dict], vector: torch.Tensor, fmt: str) -> list[dict]:
    """Messages with the conditioning summary as (the start of) the system message."""
    note = f"World-model conditioning for the next reply: {conditioning_text(vector, fmt)}"
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{note}\n{out[0].get('content') or ''}".strip()
        return out
    return [{"role": "system", "content": note}, *out]


def truncate_left(ids: list[int], budget: int) -> tuple[list[int], int]:
    """Keep the last `budget` ids (the latest turns and the assistant header); returns (ids, dropped)."""
    if budget < 1:
        raise TextJepaError("the decoder context has no room for the prompt (lower --max-new-tokens or the prefix)")
    if len(ids) <= budget:
        return ids, 0
    return ids[-budget:], len(ids) - budget
