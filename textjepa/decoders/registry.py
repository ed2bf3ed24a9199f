"""Decoder backends by name. LLM backends import their heavy dependencies only when asked for."""

from __future__ import annotations

from pathlib import Path

from textjepa.decoders.base import Decoder
from textjepa.errors import TextJepaError

DECODERS = ("retrieval",)


def load_decoder(name: str, model_path: Path, **options) -> Decoder:
    if name == "retrieval":
        from textjepa.decoders.retrieval import RetrievalDecoder, RetrievalIndex

        return RetrievalDecoder(RetrievalIndex.load(model_path))
    raise TextJepaError(f"unknown decoder {name!r}; available: {', '.join(DECODERS)}")
