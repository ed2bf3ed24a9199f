"""The offline default decoder: answer with the training reply whose latent is nearest to the prediction.

Its index is built at the end of world training from the best checkpoint: the latents of the training split's
next turns (deduplicated) in its reply space (its teacher's, or the frozen target model's with --target-model),
beside the reply texts, and the mean next latent (the "mean" baseline of eval-world).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from tokenizers import Tokenizer

from textjepa.data.batches import Batch, iter_split_batches
from textjepa.data.contract import DataContract
from textjepa.data.lines import escape, unescape
from textjepa.data.tokens import TokenStore
from textjepa.decoders.base import Conditioning, Generation
from textjepa.errors import TextJepaError
from textjepa.io import RunFiles, atomic_write_text, write_safetensors

INDEX_FORMAT = "textjepa-index"
MAX_INDEX_ENTRIES = 200_000


@torch.no_grad()
def build_retrieval_index(
    model_path: Path,
    reply_latents: Callable[[Batch], torch.Tensor],
    store: TokenStore,
    tokenizer: Tokenizer,
    data: DataContract,
    batch: int = 128,
    reply_texts: Sequence[str] | None = None,
) -> Path:
    """reply_latents: a batch's next turns in the checkpoint's reply space (the inference core's
    `WorldInference.reply_latents`, which picks that space). reply_texts: every record's next turn as the file
    wrote it, in store order, where the tokenizer cannot give it back (else the stored ids are decoded)."""
    files = RunFiles(model_path)
    index_file, replies_file = files.index, files.replies
    seen: dict[str, int] = {}
    latents: list[torch.Tensor] = []
    total: torch.Tensor | None = None
    count = 0
    # The training split of the checkpoint's own data contract, read the way the world model read it.
    for chunk in iter_split_batches(store, batch, data.max_seq, "train", data.val_fraction, data.seed, drop_last=False):
        pooled = reply_latents(chunk).float().cpu()
        total = pooled.double().sum(0) + (total if total is not None else 0)
        count += len(pooled)
        for row, record in enumerate(chunk.index):
            if len(seen) >= MAX_INDEX_ENTRIES:
                break
            if reply_texts is not None:
                text = reply_texts[int(record)]
            else:
                text = tokenizer.decode(store.fields["next"].record(int(record)).tolist(), skip_special_tokens=True)
            if text not in seen:
                seen[text] = len(seen)
                latents.append(pooled[row])
    if not latents or total is None:
        raise TextJepaError("no training next turns to index")
    matrix = F.normalize(torch.stack(latents), dim=-1)
    mean = (total / max(1, count)).float()
    replies_text = "\n".join(escape(text) for text in seen) + "\n"
    atomic_write_text(replies_file, replies_text)
    # The run id ties the index to its checkpoint and the digest ties the reply texts to the index: a set
    # mixed from two runs (a run killed before writing its own index) is refused on load.
    write_safetensors(
        index_file,
        {"latents": matrix.contiguous(), "mean_next_latent": mean.contiguous()},
        {
            "format": INDEX_FORMAT,
            "checkpoint": model_path.name,
            "run_id": checkpoint_run_id(model_path),
            "replies": replies_file.name,
            "replies_sha256": hashlib.sha256(replies_text.encode("utf-8")).hexdigest(),
        },
    )
    return index_file


def checkpoint_run_id(model_path: Path) -> str:
    """The run id recorded in a checkpoint's metadata ("" for checkpoints written before run ids)."""
    with safe_open(str(model_path), framework="pt") as handle:
        info = json.loads((handle.metadata() or {}).get("info", "{}"))
    return str(info.get("run_id", ""))


class RetrievalIndex:
    def __init__(self, latents: torch.Tensor, mean_next_latent: torch.Tensor, replies: list[str]) -> None:
        self.latents, self.mean_next_latent, self.replies = latents, mean_next_latent, replies

    @classmethod
    def load(cls, model_path: Path) -> RetrievalIndex:
        files = RunFiles(model_path)
        index_file, replies_file = files.index, files.replies
        if not index_file.is_file() or not replies_file.is_file():
            raise TextJepaError(
                f"retrieval index {index_file.name} not found beside {model_path.name}; it is written at the end of "
                "train-world (re-run training to completion)"
            )
        with safe_open(str(index_file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != INDEX_FORMAT:
                raise TextJepaError(f"{index_file} is not a textjepa retrieval index")
            latents, mean = handle.get_tensor("latents"), handle.get_tensor("mean_next_latent")
        if metadata.get("run_id", "") != checkpoint_run_id(model_path):
            raise TextJepaError(
                f"{index_file.name} belongs to another run than {model_path.name}; re-run training to completion "
                "(or with --overwrite)"
            )
        replies_text = replies_file.read_text(encoding="utf-8")
        digest = metadata.get("replies_sha256")
        if digest is not None and hashlib.sha256(replies_text.encode("utf-8")).hexdigest() != digest:
            raise TextJepaError(f"{replies_file.name} is not the reply list of {index_file.name} (another run's?)")
        replies = [unescape(line) for line in replies_text.splitlines()]
        if len(replies) != len(latents):
            raise TextJepaError(
                f"{replies_file} does not match {index_file} ({len(replies)} vs {len(latents)} entries)"
            )
        return cls(latents, mean, replies)

    def nearest(self, query: torch.Tensor, k: int) -> list[tuple[str, float]]:
        scores = self.latents @ F.normalize(query.float().cpu(), dim=-1)
        top = torch.topk(scores, min(k, len(scores)))
        return [(self.replies[int(i)], float(s)) for s, i in zip(top.values, top.indices)]


class RetrievalDecoder:
    """Nearest training reply to the predicted next latent (cosine)."""

    name = "retrieval"
    thread_safe = True  # read-only tensors: the server may run several generations at once

    def __init__(self, index: RetrievalIndex) -> None:
        self.index = index

    def generate(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int = 128, top_k: int = 1, **_
    ) -> Generation:
        notes = []
        query = conditioning.predicted
        if conditioning.ablated:
            query = conditioning.state
            notes.append("conditioning ablated: retrieval falls back to the context latent")
        ranked = self.index.nearest(query, max(1, top_k))
        text = truncate_words(ranked[0][0], max_new_tokens)
        return Generation(text=text, alternatives=ranked, notes=notes, completion_tokens=len(text.split()))

    def stream(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int = 128, **options
    ) -> Iterator[str]:
        text = self.generate(messages, conditioning, max_new_tokens, **options).text
        # Word by word, keeping the whitespace, so joined chunks equal the non-streamed text.
        yield from re.findall(r"\S+\s*|\s+", text)


def truncate_words(text: str, max_words: int) -> str:
    words = re.findall(r"\S+\s*", text)
    return text if len(words) <= max_words else "".join(words[:max_words]).rstrip()
