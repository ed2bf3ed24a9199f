"""Next-token choice for the transformers decoder, with llama.cpp's defaults (repeat penalty over the
last n tokens, top-k, top-p, temperature; temperature 0 is greedy), and incremental detokenizing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from textjepa.config import DecoderSettings


def next_token(
    logits: torch.Tensor, history: Sequence[int], settings: DecoderSettings, generator: torch.Generator
) -> int:
    """logits: [vocab] for the next position; history: prompt + generated ids so far."""
    logits = logits.float().clone()
    if settings.repeat_penalty != 1.0 and history:
        recent = torch.tensor(sorted(set(history[-settings.repeat_last_n :])), dtype=torch.long, device=logits.device)
        picked = logits[recent]
        logits[recent] = torch.where(picked > 0, picked / settings.repeat_penalty, picked * settings.repeat_penalty)
    if settings.temperature <= 0:
        return int(torch.argmax(logits))
    if 0 < settings.top_k < logits.numel():
        threshold = torch.topk(logits, settings.top_k).values[-1]
        logits[logits < threshold] = float("-inf")
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if 0 < settings.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, 0) - sorted_probs < settings.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class IncrementalText:
    """Turns a growing list of token ids into text pieces; a piece never ends in half a character."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode, self.ids, self.emitted = decode, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        piece, self.emitted = text[len(self.emitted) :], text
        return piece
