"""context -> next_turn pairs for the prefix bridge, split exactly as the world model split them.

A pair's record number is its position among the usable pairs of the file under the same rules as
the world model's token store (the world tokenizer and the checkpoint's data contract: `min_tokens`,
`max_line_bytes`), so the contract's `is_validation` picks the very pairs the world model held out.
train-bridge learns on the world model's training split; eval-conditioning measures on its validation split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from textjepa.checkpoint import Checkpoint
from textjepa.config import DEFAULT_ACTION
from textjepa.data.contract import token_ids
from textjepa.data.lines import LineStats, iter_world_pairs, require_usable
from textjepa.decoders.hf_model import CausalLM
from textjepa.decoders.prompting import context_messages, truncate_left
from textjepa.errors import TextJepaError

if TYPE_CHECKING:
    from textjepa.inference.world import WorldInference

_CHUNK = 2048


@dataclass(frozen=True)
class PairRecord:
    record: int  # the record number in the world model's token store
    context: str
    reply: str


def read_pairs(path: Path, checkpoint: Checkpoint) -> tuple[list[PairRecord], LineStats]:
    contract = checkpoint.data
    stats = LineStats()
    pairs: list[PairRecord] = []
    reader = iter_world_pairs(path, contract.max_line_bytes, stats)
    while chunk := list(islice(reader, _CHUNK)):
        contexts = token_ids(checkpoint.tokenizer, [p.context for p in chunk])
        replies = token_ids(checkpoint.tokenizer, [p.next_turn for p in chunk])
        for pair, c, r in zip(chunk, contexts, replies):
            if not contract.long_enough(c, r):
                stats.skip("too few tokens")
                continue
            pairs.append(PairRecord(len(pairs), pair.context, pair.next_turn))
            stats.used += 1
    require_usable(stats, path, "context/next_turn pairs")
    return pairs, stats


def split_pairs(pairs: Sequence[PairRecord], checkpoint: Checkpoint, split: str) -> list[PairRecord]:
    """split: "train" or "val" (the world model's held-out pairs)."""
    held = checkpoint.data.is_validation(np.asarray([p.record for p in pairs], dtype=np.int64))
    want = split == "val"
    return [p for p, h in zip(pairs, held) if bool(h) == want]


@dataclass
class LMExample:
    record: int
    prompt_ids: list[int]
    reply_ids: list[int]


def lm_examples(
    lm: CausalLM, pairs: Sequence[PairRecord], max_prompt_tokens: int, max_reply_tokens: int
) -> list[LMExample]:
    """The LM's view of each pair: the chat-templated context, and the reply (plus the end-of-turn
    token when the reply is not cut) as the target."""
    end = lm.tokenizer.eos_token_id
    if end is None and lm.stop_ids:
        end = min(lm.stop_ids)
    out = []
    for pair in pairs:
        prompt, _ = truncate_left(lm.prompt_ids(context_messages(pair.context)), max_prompt_tokens)
        reply = lm.encode(pair.reply)
        reply = reply[:max_reply_tokens] if len(reply) >= max_reply_tokens or end is None else reply + [int(end)]
        if reply:
            out.append(LMExample(pair.record, prompt, reply))
    if not out:
        raise TextJepaError("no pair has a reply the decoder's tokenizer can encode")
    return out


@torch.no_grad()
def predicted_latents(model: WorldInference, contexts: Sequence[str], batch: int = 256) -> torch.Tensor:
    """The world model's predicted next latents [N, predicted dim], as the Python API and the agent predict."""
    return model.predict_texts(list(contexts), DEFAULT_ACTION, batch)


@torch.no_grad()
def reply_latents(model: WorldInference, replies: Sequence[str], batch: int = 256) -> torch.Tensor:
    """The true replies in the world model's reply space [N, predicted dim] (the teacher's latents, encoded as
    replies under the data contract, or the frozen target model's embeddings), as the world model's targets: what
    a perfect world model would predict. eval-conditioning's oracle row; train-bridge's --oracle-latent and
    --target-mix."""
    return model.embed_replies(list(replies), batch)


@torch.no_grad()
def retrieved_replies(model: WorldInference, contexts: Sequence[str], batch: int = 64) -> list[str]:
    """The retrieval decoder's answer to each context, as `infer --decoder retrieval` gives it: the training reply
    (from the index train-world wrote beside the checkpoint) whose latent is nearest the prediction."""
    from textjepa.decoders.retrieval import RetrievalDecoder

    decoder = RetrievalDecoder(model.retrieval_index())
    answers: list[str] = []
    for start in range(0, len(contexts), batch):
        chunk = list(contexts[start : start + batch])
        conditionings, _ = model.condition(chunk)
        answers += [decoder.generate(context_messages(c), cond).text for c, cond in zip(chunk, conditionings)]
    return answers


# text-RAG's prompt: the retrieved reply as plain text before the question (in the last user turn).
TEXT_RAG_TEMPLATE = "Relevant answer: {reply}\n\n{question}"


def text_rag_messages(context: str, retrieved: str) -> list[dict]:
    """The context's chat messages with the retrieved reply put before the text of the last user turn."""
    messages = context_messages(context)
    for message in reversed(messages):
        if message["role"] == "user":
            message["content"] = TEXT_RAG_TEMPLATE.format(reply=retrieved, question=message["content"])
            return messages
    return [{"role": "user", "content": TEXT_RAG_TEMPLATE.format(reply=retrieved, question="").strip()}, *messages]


def text_rag_prompt_ids(lm: CausalLM, context: str, retrieved: str, max_prompt_tokens: int) -> list[int]:
    prompt, _ = truncate_left(lm.prompt_ids(text_rag_messages(context, retrieved)), max_prompt_tokens)
    return prompt


def conditioning_latents(model: WorldInference, pairs: Sequence[PairRecord], oracle: bool = False) -> torch.Tensor:
    """The projector's inputs for these pairs: the world model's predictions, or (oracle) the true replies'."""
    if oracle:
        return reply_latents(model, [p.reply for p in pairs])
    return predicted_latents(model, [p.context for p in pairs])


def derangement(n: int, seed: int) -> torch.Tensor:
    """A fixed permutation with no fixed point: row i gets another row's conditioning."""
    if n < 2:
        raise TextJepaError("shuffled conditioning needs at least two pairs")
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.roll(order, -1)
    return torch.from_numpy(out)
