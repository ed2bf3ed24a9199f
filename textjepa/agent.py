"""The agent: encode(prompt) -> transition(reply) -> bridge -> decoder -> text.

Loads a world checkpoint once; used by `infer` and by the HTTP server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from textjepa.api import Encoded, WorldModel, as_messages, conversation_context, load_world
from textjepa.checkpoint import check_shape_overrides
from textjepa.config import DEFAULT_ACTION
from textjepa.data.tokens import check_vocab_argument
from textjepa.decoders.base import Conditioning, Decoder, Generation

# Re-exported: the agent's callers read conversations and checkpoints through here.
__all__ = ["Agent", "Encoded", "Reply", "as_messages", "conversation_context", "load_world"]


@dataclass
class Reply:
    generation: Generation
    conditioning: Conditioning
    context: str
    prompt_tokens: int
    notes: list[str] = field(default_factory=list)


class Agent:
    """A world model (textjepa.api.WorldModel: encoding, prediction, conditioning) and a decoder."""

    def __init__(self, model: WorldModel, decoder: Decoder | None) -> None:
        self.model, self.decoder = model, decoder
        self.checkpoint, self.config, self.tokenizer = model.checkpoint, model.config, model.checkpoint.tokenizer
        self.device = model.device

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
        model = WorldModel.load(model_path, device or torch.device("cpu"), precision=precision)
        check_shape_overrides(model.config, shape_overrides or {}, model.checkpoint.path)
        if vocab:
            check_vocab_argument(vocab, model.checkpoint.tokenizer)
        return cls(model, model.decoder(decoder, **decoder_options))

    @property
    def model_name(self) -> str:
        return self.checkpoint.path.name

    def tokenize(self, texts: Sequence[str]) -> Encoded:
        """Model input for contexts under the checkpoint's data contract: a text longer than max_seq keeps its
        last max_seq tokens (the latest turns), exactly as in training."""
        return self.model.context_encoder.tokenize(texts)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled encoder latents (the online encoder, as the world model's state)."""
        return self.embed_encoded(self.tokenize(texts))

    def embed_encoded(self, encoded: Encoded) -> torch.Tensor:
        return self.model.context_encoder.embed(encoded)

    def condition(
        self, contexts: Sequence[str], ablate: bool = False, action: str = DEFAULT_ACTION
    ) -> tuple[list[Conditioning], Encoded]:
        return self.model.condition(contexts, ablate=ablate, action=action)

    def prepare(self, messages: Sequence[dict], ablate: bool = False) -> tuple[str, Conditioning, int, list[str]]:
        return self.model.prepare(messages, ablate)

    def respond(
        self, prompt: str | Sequence[dict], ablate: bool = False, max_new_tokens: int = 128, **options
    ) -> Reply:
        """prompt: a string or OpenAI-style messages. The world model sees the conversation context; the
        decoder gets the messages (an LLM applies its chat template) and the conditioning."""
        messages = as_messages(prompt)
        context, conditioning, prompt_tokens, notes = self.prepare(messages, ablate)
        generation = self.decoder.generate(messages, conditioning, max_new_tokens=max_new_tokens, **options)
        return Reply(generation, conditioning, context, prompt_tokens, notes + generation.notes)

    def stream(
        self, prompt: str | Sequence[dict], ablate: bool = False, max_new_tokens: int = 128, **options
    ) -> Iterator[str]:
        messages = as_messages(prompt)
        _, conditioning, _, _ = self.prepare(messages, ablate)
        yield from self.decoder.stream(messages, conditioning, max_new_tokens=max_new_tokens, **options)
