"""The agent: a loaded world model answering conversations through a decoder.

conversation -> context text -> state latent -> (action `reply`) -> predicted next latent and the conditioning
head's vector (textjepa/inference/world.py) -> decoder -> text. Used by `infer`, the demo, the HTTP server and the
Python API's `WorldModel.reply`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from textjepa.checkpoint import check_shape_overrides
from textjepa.data.tokens import check_vocab_argument
from textjepa.decoders.base import Conditioning, Decoder, Generation
from textjepa.decoders.registry import load_decoder
from textjepa.inference.conversation import as_messages
from textjepa.inference.world import WorldInference


@dataclass
class Reply:
    generation: Generation
    conditioning: Conditioning
    context: str
    prompt_tokens: int
    notes: list[str] = field(default_factory=list)


class Agent:
    """A world model (`world`: encoding, prediction, conditioning) and the decoder that reads its conditioning."""

    def __init__(self, world: WorldInference, decoder: Decoder) -> None:
        self.world, self.decoder = world, decoder

    @classmethod
    def with_decoder(cls, world: WorldInference, decoder: str = "retrieval", **decoder_options) -> Agent:
        """`world` answering through a decoder by name: "retrieval" (offline, the nearest training reply),
        "transformers" or "llamacpp" (`decoder_model=`, optionally `bridge=`, the prefix bridge's file)."""
        checkpoint = world.checkpoint
        options = {"world_checkpoint": checkpoint, "device": world.device, **decoder_options}
        return cls(world, load_decoder(decoder, checkpoint.path, **options))

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        decoder: str = "retrieval",
        device: torch.device | None = None,
        vocab: str | None = None,
        shape_overrides: dict | None = None,
        precision: str = "auto",
        **decoder_options,
    ) -> Agent:
        """A world checkpoint and its decoder; `vocab` and `shape_overrides` (the seed's arguments) must match it."""
        world = WorldInference.load(model_path, device or torch.device("cpu"), precision=precision)
        check_shape_overrides(world.config, shape_overrides or {}, world.checkpoint.path)
        if vocab:
            check_vocab_argument(vocab, world.checkpoint.tokenizer)
        return cls.with_decoder(world, decoder, **decoder_options)

    @property
    def model_name(self) -> str:
        return self.world.checkpoint.path.name

    def respond(
        self, prompt: str | Sequence[dict], ablate: bool = False, max_new_tokens: int = 128, **options
    ) -> Reply:
        """prompt: a string or OpenAI-style messages. The world model sees the conversation context; the
        decoder gets the messages (an LLM applies its chat template) and the conditioning."""
        messages = as_messages(prompt)
        context, conditioning, prompt_tokens, notes = self.world.prepare(messages, ablate)
        generation = self.decoder.generate(messages, conditioning, max_new_tokens=max_new_tokens, **options)
        return Reply(generation, conditioning, context, prompt_tokens, notes + generation.notes)

    def stream(
        self, prompt: str | Sequence[dict], ablate: bool = False, max_new_tokens: int = 128, **options
    ) -> Iterator[str]:
        messages = as_messages(prompt)
        _, conditioning, _, _ = self.world.prepare(messages, ablate)
        yield from self.decoder.stream(messages, conditioning, max_new_tokens=max_new_tokens, **options)
