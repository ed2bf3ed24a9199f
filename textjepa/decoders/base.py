"""The interface every decoder implements: text from a prompt and the world model's conditioning."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class Conditioning:
    """What the world model says about the next turn.

    predicted: the transition's predicted next-turn latent; state: the context latent it came from (with a frozen
    target model, through the target head into the prediction's space);
    vector: the conditioning head's vector (zeros when ablated).
    """

    predicted: torch.Tensor
    state: torch.Tensor
    vector: torch.Tensor
    ablated: bool = False


@dataclass
class Generation:
    text: str
    alternatives: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    completion_tokens: int = 0


class Decoder(Protocol):
    """messages: OpenAI-style [{"role": ..., "content": ...}]; the last one is the user's turn."""

    name: str

    def generate(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int = 128, **options
    ) -> Generation: ...

    def stream(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int = 128, **options
    ) -> Iterator[str]: ...


class TokenStreamingDecoder:
    """generate() and stream() for decoders that yield text pieces token by token from a prepared prompt.

    Subclasses provide prepare(messages, conditioning, max_new_tokens) -> an object with .notes, and
    _pieces(prepared, max_new_tokens, options, counter) which yields text and counts tokens in counter[0].
    """

    def generate(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int = 128, **options
    ) -> Generation:
        prepared = self.prepare(messages, conditioning, max_new_tokens)
        counter = [0]
        text = "".join(self._pieces(prepared, max_new_tokens, options, counter))
        return Generation(text=text, notes=prepared.notes, completion_tokens=counter[0])

    def stream(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int = 128, **options
    ) -> Iterator[str]:
        prepared = self.prepare(messages, conditioning, max_new_tokens)
        yield from self._pieces(prepared, max_new_tokens, options, [0])
