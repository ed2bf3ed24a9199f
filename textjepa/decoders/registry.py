"""Decoder backends by name. LLM backends import their heavy dependencies only when asked for."""

from __future__ import annotations

from pathlib import Path

import torch

from textjepa.decoders.base import Decoder
from textjepa.errors import TextJepaError
from textjepa.settings import Settings

DECODERS = ("retrieval", "transformers", "llamacpp")


def load_decoder(
    name: str,
    model_path: Path,
    world_checkpoint=None,
    device: torch.device | None = None,
    bridge: str | None = None,
    decoder_model: str | None = None,
    settings: Settings | None = None,
    **_,
) -> Decoder:
    """`settings`: the environment the command was started with (JEPA_DECODER_*, TEXTJEPA_GGUF_CACHE); none
    given, none set."""
    device = device or torch.device("cpu")
    if name == "retrieval":
        if bridge or decoder_model:
            raise TextJepaError("--bridge and --decoder-model are for --decoder transformers or llamacpp")
        from textjepa.decoders.retrieval import RetrievalDecoder, RetrievalIndex

        return RetrievalDecoder(RetrievalIndex.load(model_path))
    if name == "transformers":
        from textjepa.decoders.hf import load_transformers_decoder

        return load_transformers_decoder(world_checkpoint, device, bridge, decoder_model, settings)
    if name == "llamacpp":
        from textjepa.decoders.llamacpp import load_llamacpp_decoder

        return load_llamacpp_decoder(world_checkpoint, bridge, decoder_model, settings)
    raise TextJepaError(f"unknown decoder {name!r}; available: {', '.join(DECODERS)}")
