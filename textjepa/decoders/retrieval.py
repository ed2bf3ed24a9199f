"""The offline default decoder: answer with the training reply whose latent is nearest to the prediction.

Its index is built at the end of world training from the best checkpoint: the latents of the training split's
next turns (deduplicated) in its reply space (its teacher's, or the frozen target model's with --target-model),
beside the reply texts, and the mean next latent (the "mean" baseline of eval-world); and the training contexts'
state latents with the reply each led to, for recall.

Recall: when the prompt's context is nearly one the model was trained on (state cosine >= RECALL_THRESHOLD), the
replies that followed such contexts come first. The transition predicts near the centre of a cluster of alike
questions (the demo's shutil.copyfile, shutil.copy and distutils' copy_file), so without it a question from the
training data can get its neighbour's answer; docs/results.md has the measurement behind the threshold.
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
# Measured on the demo's stdlib pairs (docs/results.md): at 0.98 the training questions' own replies go from 0.573
# to 0.971 of the time among 4,807, while a question the model was not trained on loses a little (0.573 -> 0.553,
# each training question with its own context left out; 0.387 -> 0.390 on the 282 held-out ones). 0.95 costs the
# new questions more (0.518: alike questions about other functions), and 0.99 misses the demo's own question, asked
# in fewer words than its training form (cosine 0.987).
RECALL_THRESHOLD = 0.98


@torch.no_grad()
def build_retrieval_index(
    model_path: Path,
    reply_latents: Callable[[Batch], torch.Tensor],
    store: TokenStore,
    tokenizer: Tokenizer,
    data: DataContract,
    batch: int = 128,
    reply_texts: Sequence[str] | None = None,
    context_states: Callable[[Batch], torch.Tensor] | None = None,
) -> Path:
    """reply_latents: a batch's next turns in the checkpoint's reply space (the inference core's
    `WorldInference.reply_latents`, which picks that space). reply_texts: every record's next turn as the file
    wrote it, in store order, where the tokenizer cannot give it back (else the stored ids are decoded).
    context_states: a batch's contexts as the decoder's `Conditioning.state` (`WorldInference.context_states`), for
    recall; none given, the index has no contexts and the decoder answers from the prediction alone."""
    files = RunFiles(model_path)
    index_file, replies_file = files.index, files.replies
    seen: dict[str, int] = {}
    latents: list[torch.Tensor] = []
    contexts: list[torch.Tensor] = []
    context_replies: list[int] = []
    total: torch.Tensor | None = None
    count = 0
    # The training split of the checkpoint's own data contract, read the way the world model read it.
    for chunk in iter_split_batches(store, batch, data.max_seq, "train", data.val_fraction, data.seed, drop_last=False):
        pooled = reply_latents(chunk).float().cpu()
        states = context_states(chunk).float().cpu() if context_states is not None else None
        total = pooled.double().sum(0) + (total if total is not None else 0)
        count += len(pooled)
        for row, record in enumerate(chunk.index):
            if reply_texts is not None:
                text = reply_texts[int(record)]
            else:
                text = tokenizer.decode(store.fields["next"].record(int(record)).tolist(), skip_special_tokens=True)
            if text not in seen:
                if len(seen) >= MAX_INDEX_ENTRIES:
                    continue
                seen[text] = len(seen)
                latents.append(pooled[row])
            if states is not None and len(contexts) < MAX_INDEX_ENTRIES:
                contexts.append(states[row])
                context_replies.append(seen[text])
    if not latents or total is None:
        raise TextJepaError("no training next turns to index")
    matrix = F.normalize(torch.stack(latents), dim=-1)
    tensors = {"latents": matrix.contiguous(), "mean_next_latent": (total / max(1, count)).float().contiguous()}
    if contexts:
        tensors["context_states"] = F.normalize(torch.stack(contexts), dim=-1).contiguous()
        tensors["context_replies"] = torch.tensor(context_replies, dtype=torch.long)
    replies_text = "\n".join(escape(text) for text in seen) + "\n"
    atomic_write_text(replies_file, replies_text)
    # The run id ties the index to its checkpoint and the digest ties the reply texts to the index: a set
    # mixed from two runs (a run killed before writing its own index) is refused on load.
    write_safetensors(
        index_file,
        tensors,
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
    """latents: the training replies [R, dim], unit length, beside `replies`; context_states [C, state dim] and
    context_replies [C]: each training context and the row of the reply that followed it (None in an index written
    before recall)."""

    def __init__(
        self,
        latents: torch.Tensor,
        mean_next_latent: torch.Tensor,
        replies: list[str],
        context_states: torch.Tensor | None = None,
        context_replies: torch.Tensor | None = None,
    ) -> None:
        self.latents, self.mean_next_latent, self.replies = latents, mean_next_latent, replies
        self.context_states, self.context_replies = context_states, context_replies

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
            names = set(handle.keys())
            states = handle.get_tensor("context_states") if "context_states" in names else None
            context_replies = handle.get_tensor("context_replies") if "context_replies" in names else None
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
        if (states is None) != (context_replies is None) or (
            context_replies is not None
            and (len(states) != len(context_replies) or bool((context_replies >= len(replies)).any()))
        ):
            raise TextJepaError(f"{index_file.name} has a broken context table; re-run training to completion")
        return cls(latents, mean, replies, states, context_replies)

    def nearest(self, query: torch.Tensor, k: int) -> list[tuple[str, float]]:
        """The k training replies nearest `query` by cosine, with their cosines."""
        scores = self.latents @ F.normalize(query.float().cpu(), dim=-1)
        top = torch.topk(scores, min(k, len(scores)))
        return [(self.replies[int(i)], float(s)) for s, i in zip(top.values, top.indices)]

    def recalled(self, state: torch.Tensor, threshold: float = RECALL_THRESHOLD) -> torch.Tensor:
        """Per reply, the highest cosine between `state` and a training context that reply followed, where it is at
        least `threshold` (else 0): which replies the model was taught for a context like this one."""
        recall = torch.zeros(len(self.replies))
        if self.context_states is None or self.context_replies is None:
            return recall
        similarity = self.context_states @ F.normalize(state.float().cpu(), dim=-1)
        close = similarity >= threshold
        return recall.scatter_reduce(0, self.context_replies[close], similarity[close], "amax")

    def answer(
        self, predicted: torch.Tensor, state: torch.Tensor | None, k: int
    ) -> tuple[list[tuple[str, float]], float]:
        """The retrieval decoder's k best replies with their cosines to the prediction, and the recall cosine (0 when
        nothing was recalled). Replies recalled for `state` come first, by cosine to the prediction plus recall
        cosine; then the rest by cosine to the prediction."""
        cosines = self.latents @ F.normalize(predicted.float().cpu(), dim=-1)
        recall = self.recalled(state) if state is not None else torch.zeros_like(cosines)
        # Recalled replies score above 2, beyond any cosine, so they come first.
        scores = torch.where(recall > 0, cosines + recall + 2.0, cosines)
        top = torch.topk(scores, min(k, len(scores))).indices
        return [(self.replies[int(i)], float(cosines[i])) for i in top], float(recall[top[0]])


class RetrievalDecoder:
    """Nearest training reply to the predicted next latent (cosine), after the replies recalled for a context the
    model was trained on (`recall=False`: from the prediction alone)."""

    name = "retrieval"
    thread_safe = True  # read-only tensors: the server may run several generations at once

    def __init__(self, index: RetrievalIndex, recall: bool = True) -> None:
        self.index, self.recall = index, recall

    def generate(
        self,
        messages: list[dict],
        conditioning: Conditioning,
        max_new_tokens: int = 128,
        top_k: int = 1,
        recall: bool | None = None,
        **_,
    ) -> Generation:
        """recall: this call's choice (None: the decoder's)."""
        notes = []
        query = conditioning.predicted
        if conditioning.ablated:
            query = conditioning.state
            notes.append("conditioning ablated: retrieval falls back to the context latent")
        recalling = self.recall if recall is None else recall
        ranked, recall_cosine = self.index.answer(query, conditioning.state if recalling else None, max(1, top_k))
        if recall_cosine > 0:
            notes.append(
                f"recalled: a training context at cosine {recall_cosine:.3f} to this one was followed by this reply"
            )
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
