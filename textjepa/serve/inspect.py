"""What the world model predicts for a conversation, shown beside each answer of the chat page.

`POST /v1/textjepa/inspect` takes the messages of a chat request and answers with the action, the training
replies whose teacher latents are nearest (cosine) to the predicted next-turn latent, and those nearest to
the context latent (what the retrieval decoder answers from when the conditioning is ablated), each list in the
retrieval decoder's order (replies recalled for a context nearly the same as a training one first). The replies
come from the retrieval index written beside every world checkpoint at the end of `train-world`; an LLM
decoder does not need that index to answer, so the server loads it only when something asks to inspect.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch.nn.functional as F

from textjepa.decoders.base import Conditioning
from textjepa.decoders.retrieval import RetrievalIndex
from textjepa.errors import TextJepaError

MAX_TOP_K = 50


class ReplyIndex:
    """The world checkpoint's retrieval index: the retrieval decoder's own, or loaded once on first use."""

    def __init__(self, checkpoint_path: Path, decoder: object) -> None:
        self.checkpoint_path = checkpoint_path
        # The retrieval decoder holds the index already; reusing it keeps one copy in memory.
        self._index: RetrievalIndex | None = getattr(decoder, "index", None)
        if not isinstance(self._index, RetrievalIndex):
            self._index = None
        self._missing: str | None = None
        self._loading = asyncio.Lock()

    async def get(self) -> tuple[RetrievalIndex | None, str | None]:
        """(index, None), or (None, why there is none)."""
        if self._index is None and self._missing is None:
            async with self._loading:
                if self._index is None and self._missing is None:
                    try:
                        self._index = await asyncio.to_thread(RetrievalIndex.load, self.checkpoint_path)
                    except TextJepaError as exc:
                        self._missing = f"no nearest replies: {exc}"
        return self._index, self._missing


def neighbours(index: RetrievalIndex, conditioning: Conditioning, top_k: int) -> dict:
    """The training replies the retrieval decoder ranks first for the predicted next latent and, ablated, for the
    context latent, with their cosines to it: those recalled for a context like a training one first (`recalled`:
    that context's cosine, else None), then the nearest."""

    def listed(pairs: list[tuple[str, float]]) -> list[dict]:
        return [{"text": text, "score": round(score, 6)} for text, score in pairs]

    predicted, state = conditioning.predicted.float(), conditioning.state.float()
    ranked, recalled = index.answer(predicted, state, top_k)
    return {
        "nearest": listed(ranked),
        "context_nearest": listed(index.answer(state, state, top_k)[0]),
        "recalled": round(recalled, 6) if recalled > 0 else None,
        # How far the transition moved the prediction away from "the next turn looks like the context".
        "prediction_context_cosine": round(float(F.cosine_similarity(predicted, state, dim=0)), 6),
    }
