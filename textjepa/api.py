"""The Python API: a trained checkpoint used like a sentence-transformers model.

    from textjepa import WorldModel, Encoder

    wm = WorldModel.load("runs/model_world_1.2M.safetensors", device="auto")
    states = wm.encode(["User: how do I boil pasta?"], normalize=True)   # [N, dim] float32
    predicted = wm.predict_next(["User: how do I boil pasta?"])          # the predicted next-turn latents
    wm.nearest_replies("User: how do I boil pasta?", k=5)                # [(training reply, cosine), ...]
    wm.reply([{"role": "user", "content": "how do I boil pasta?"}])      # the decoder's answer
    Encoder.load("runs/model_latent_1.2M.safetensors").encode(["a line of text"])

Texts become model input under the checkpoint's data contract (textjepa/data/contract.py), exactly as in
training: `WorldModel.encode` embeds texts as contexts (the state latent; a long text keeps its LAST max_seq
tokens, its latest turns) unless `kind="reply"` asks for the EMA teacher's reply latent (a long text keeps its
FIRST max_seq tokens), which is what the retrieval index holds and what the transition learned to predict. An
`Encoder` of a latent checkpoint reads plain text lines (first max_seq tokens). Vectors are the mean of the
encoder's token latents over the real tokens.

A world model trained with `--target-model` predicts in a frozen sentence-transformers model's space: its replies
(`kind="reply"`, the retrieval index, eval-world's candidates) are that model's embeddings, and `predict_next`
returns vectors of its width; the frozen model is loaded on first use.

This module is a facade: texts and numpy arrays in and out. The computing is the inference core's
(textjepa/inference/), which the agent (`infer`), the server, eval-world, train-bridge and train-world's retrieval
index run too, so a vector from here is the one they compute. `WorldModel.core` is that core.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from textjepa.agent import Agent
from textjepa.config import DEFAULT_ACTION, ModelConfig
from textjepa.errors import TextJepaError
from textjepa.inference.conversation import conversation_context
from textjepa.inference.encoding import DeviceLike, TextEncoder, as_array, as_texts
from textjepa.inference.world import WorldInference

if TYPE_CHECKING:
    from textjepa.checkpoint import Checkpoint
    from textjepa.decoders.base import Decoder
    from textjepa.models.frozen import FrozenEmbedder

EncodeKind = Literal["context", "reply"]
DEFAULT_BATCH_SIZE = 32


class Encoder:
    """A trained text encoder: a latent checkpoint's (reading plain text lines), or a world checkpoint's (reading
    contexts; `teacher=True`: its EMA teacher, reading replies)."""

    def __init__(self, core: TextEncoder) -> None:
        self.core = core

    @classmethod
    def load(
        cls, path: str | Path, device: DeviceLike = "auto", teacher: bool = False, precision: str = "auto"
    ) -> Encoder:
        """A checkpoint's encoder. teacher: the EMA teacher saved beside it (`_teacher.safetensors`) instead.
        precision: as the CLI's --precision (auto, fp32 or bf16) and with the same default, so the Python API
        and `textjepa embed` give the same vectors on the same machine."""
        return cls(TextEncoder.load(path, device, teacher, precision))

    @property
    def checkpoint(self) -> Checkpoint:
        return self.core.checkpoint

    @property
    def dim(self) -> int:
        return self.core.dim

    @property
    def max_seq(self) -> int:
        return self.core.max_seq

    @property
    def precision(self) -> str:
        """What it computes in: "fp32", or "bf16" (autocast over the fp32 weights)."""
        return self.core.precision

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        normalize: bool = False,
        progress: bool = False,
    ) -> np.ndarray:
        """Embeddings [N, dim] float32 of the texts, in their order. normalize: unit length (cosine = dot)."""
        return as_array(self.core.embed_texts(as_texts(texts), batch_size, progress).vectors, normalize)


class WorldModel:
    """A trained world model: context -> state latent -> (action) -> predicted next-turn latent -> reply."""

    def __init__(self, core: WorldInference) -> None:
        self.core = core
        self._agents: dict[tuple, Agent] = {}  # by decoder name and options, each loaded once

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: DeviceLike = "auto",
        precision: str = "auto",
        target_embedder: FrozenEmbedder | None = None,
    ) -> WorldModel:
        """`model_world_*.safetensors`; its `_teacher` file must be beside it (training writes both).
        precision: "auto" (the default, as the CLI's --precision for serving: bf16 autocast only where it measured
        faster than fp32 on this kind of device, else fp32), "fp32", or "bf16" (autocast; the weights stay
        float32). So the Python API, `infer` and `serve` give the same vectors on the same machine; pass "fp32" for
        bit-stable results across CPUs.
        target_embedder: the checkpoint's frozen target model already loaded (otherwise loaded from its record
        when first needed)."""
        return cls(WorldInference.load(path, device, precision, target_embedder))

    @property
    def checkpoint(self) -> Checkpoint:
        return self.core.checkpoint

    @property
    def config(self) -> ModelConfig:
        return self.core.config

    @property
    def precision(self) -> str:
        """What it computes in: "fp32", or "bf16" (autocast over the fp32 weights)."""
        return self.core.precision

    @property
    def dim(self) -> int:
        """The width of the state latent (what `encode` returns for contexts)."""
        return self.core.config.dim

    @property
    def predicted_dim(self) -> int:
        """The width of the predicted next latent and of reply embeddings (the target model's, with one)."""
        return self.core.config.predicted_dim

    @property
    def target_model(self) -> str:
        """The frozen target model's name as recorded by train-world --target-model ("" for the teacher's space)."""
        return self.core.target_model

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        normalize: bool = False,
        kind: EncodeKind = "context",
        progress: bool = False,
    ) -> np.ndarray:
        """Embeddings [N, dim] float32. kind="context": the state latent of each text read as a context (what
        /v1/embeddings returns); kind="reply": the teacher's latent of each text read as a reply (what the
        retrieval index holds and predict_next aims at), or with a target model that frozen model's embedding."""
        if kind not in ("context", "reply"):
            raise TextJepaError(f"kind must be 'context' or 'reply', got {kind!r}")
        texts = as_texts(texts)
        if kind == "reply":
            return as_array(self.core.embed_replies(texts, batch_size, progress), normalize)
        return as_array(self.core.context_encoder.embed_texts(texts, batch_size, progress).vectors, normalize)

    def predict_next(
        self,
        contexts: str | Sequence[str],
        action: str = DEFAULT_ACTION,
        batch_size: int = DEFAULT_BATCH_SIZE,
        normalize: bool = False,
    ) -> np.ndarray:
        """The predicted next-turn latents [N, dim] float32 of contexts (`User: ...\\nAssistant: ...`) under
        an action; comparable with encode(replies, kind="reply")."""
        return as_array(self.core.predict_texts(as_texts(contexts), action, batch_size), normalize)

    def nearest_replies(
        self, context: str | Sequence[dict], k: int = 5, action: str = DEFAULT_ACTION
    ) -> list[tuple[str, float]]:
        """The k training replies whose teacher latents are nearest (cosine) to the predicted next latent: what
        the retrieval decoder answers (`infer --top-k`). context: a context text as written (the training form
        `User: ...`), or OpenAI-style messages."""
        text = context if isinstance(context, str) else conversation_context(context)
        return self.core.nearest_replies(text, k, action)

    def agent(self, decoder: str = "retrieval", **decoder_options) -> Agent:
        """This model answering through a decoder (loaded once per name and options; see `Agent.with_decoder`)."""
        key = (decoder, tuple(sorted(decoder_options.items())))
        if key not in self._agents:
            self._agents[key] = Agent.with_decoder(self.core, decoder, **decoder_options)
        return self._agents[key]

    def decoder(self, name: str = "retrieval", **options) -> Decoder:
        """A decoder for this model (loaded once per name and options): "retrieval" (offline, the nearest
        training reply), "transformers" or "llamacpp" (`decoder_model=`, optionally `bridge=`)."""
        return self.agent(name, **options).decoder

    def reply(
        self,
        messages: str | Sequence[dict],
        max_new_tokens: int = 128,
        ablate: bool = False,
        decoder: str = "retrieval",
        **decoder_options,
    ) -> str:
        """The answer to OpenAI-style messages (or one user message as a string), as `infer` gives it.
        ablate: zero the conditioning (the retrieval decoder then answers from the context latent).
        decoder_options: how to load the decoder (`decoder_model=`, `bridge=`; see `decoder`)."""
        answer = self.agent(decoder, **decoder_options).respond(messages, ablate=ablate, max_new_tokens=max_new_tokens)
        return answer.generation.text
