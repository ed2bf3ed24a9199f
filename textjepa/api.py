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
returns vectors of its width. `WorldModel.reply_latents` is the one place that picks a checkpoint's reply space;
the frozen model is loaded on first use (the retrieval decoder reads only the index written at training).

The agent (`infer`), the server and `eval-world` encode and predict through these classes, so a vector from
here is the one they compute. The torch modules themselves are textjepa.models (`heads.WorldModel`,
`encoder.Encoder`); the classes here wrap them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F

from textjepa.checkpoint import Checkpoint, load_checkpoint, load_teacher, load_with_teacher
from textjepa.config import DEFAULT_ACTION, ModelConfig
from textjepa.data.contract import Field
from textjepa.decoders.base import Conditioning
from textjepa.errors import TextJepaError
from textjepa.io import RunKind
from textjepa.models.encoder import Encoder as EncoderNetwork
from textjepa.models.frozen import (
    TARGET_MODEL_INFO,
    FrozenEmbedder,
    load_recorded_embedder,
    record_targets,
    record_texts,
)
from textjepa.models.heads import WorldModel as WorldNetwork
from textjepa.precision import autocast
from textjepa.runtime import choose_precision, resolve_device

if TYPE_CHECKING:
    from textjepa.data.batches import Batch
    from textjepa.data.tokens import TokenStore
    from textjepa.decoders.base import Decoder
    from textjepa.decoders.retrieval import RetrievalIndex

EncodeKind = Literal["context", "reply"]
ROLE_PREFIXES = {"user": "User: ", "assistant": "Assistant: "}
DeviceLike = str | torch.device | None
DEFAULT_BATCH_SIZE = 32


def as_messages(prompt: str | Sequence[dict]) -> list[dict]:
    """A bare prompt is one user message; a message list (OpenAI style) is used as it is."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def conversation_context(messages: Sequence[dict]) -> str:
    """The `User: ...\nAssistant: ...` form the world model was trained on (system turns are left out).

    A single user message that already starts with `User:` is taken as written.
    """
    turns = []
    for message in messages:
        prefix = ROLE_PREFIXES.get(message.get("role", ""))
        content = str(message.get("content") or "").strip()
        if prefix is None or not content:
            continue
        turns.append(content if content.startswith(("User:", "Assistant:")) else prefix + content)
    return "\n".join(turns)


def as_device(device: DeviceLike) -> torch.device:
    """A device by name: "auto" (CUDA when there is one, else the CPU), "cpu", "cuda[:N]"; or a torch.device."""
    if isinstance(device, torch.device):
        return device
    return resolve_device(device or "auto")


def resolve_api_precision(requested: str, device: torch.device, work: str, dim: int | None = None) -> str:
    """The compute precision ("fp32" or "bf16") of a model loaded through the Python API: the CLI's rule for the
    same work (an Encoder encodes as `embed` does, a WorldModel answers as `infer` and `serve` do)."""
    return choose_precision(requested, device, work=work, dim=dim).precision


@dataclass
class Encoded:
    """Texts as model input (on the model's device), with how many tokens each had before the cut."""

    ids: torch.Tensor
    valid: torch.Tensor
    token_counts: list[int]  # tokens of each text
    truncated: list[bool]
    kept_counts: list[int]  # tokens of each text the model sees (at most max_seq)


def _batches(texts: Sequence[str], batch_size: int) -> range:
    if batch_size < 1:
        raise TextJepaError(f"batch_size must be at least 1, got {batch_size}")
    return range(0, len(texts), batch_size)


def _as_texts(texts: str | Sequence[str]) -> list[str]:
    """One text or a list of texts (a bare string is one text, not a list of characters)."""
    if isinstance(texts, str):
        return [texts]
    listed = list(texts)
    if not all(isinstance(text, str) for text in listed):
        raise TextJepaError("texts must be strings")
    return listed


def _finish(vectors: list[torch.Tensor], dim: int, normalize: bool) -> np.ndarray:
    matrix = torch.cat(vectors) if vectors else torch.zeros(0, dim)
    if normalize:
        matrix = F.normalize(matrix, dim=-1)
    return matrix.float().cpu().numpy()


class Encoder:
    """A trained text encoder and the role its texts play under the checkpoint's data contract.

    `Encoder.load` takes a latent checkpoint (its online encoder, reading plain text lines) or a world
    checkpoint (its encoder, reading contexts; `teacher=True`: the EMA teacher, reading replies).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        network: EncoderNetwork,
        role: Field,
        device: torch.device,
        precision: str = "fp32",
    ) -> None:
        self.checkpoint, self.network, self.role, self.device = checkpoint, network, Field(role), device
        # "fp32" or "bf16" (autocast over the fp32 weights), resolved from --precision by the caller.
        self.precision = precision

    @classmethod
    def load(
        cls, path: str | Path, device: DeviceLike = "auto", teacher: bool = False, precision: str = "auto"
    ) -> Encoder:
        """A checkpoint's encoder. teacher: the EMA teacher saved beside it (`_teacher.safetensors`) instead.
        precision: as the CLI's --precision (auto, fp32 or bf16) and with the same default, so the Python API
        and `textjepa embed` give the same vectors on the same machine."""
        device = as_device(device)
        checkpoint = load_checkpoint(path)
        compute = resolve_api_precision(precision, device, "encoding", checkpoint.config.dim)
        source = load_teacher(checkpoint) if teacher else checkpoint
        network = EncoderNetwork(checkpoint.config)
        network.load_state_dict(source.module_state("encoder"))
        if checkpoint.kind is RunKind.WORLD:
            role = Field.REPLY if teacher else Field.CONTEXT
        else:
            role = Field.TEXT
        return cls(checkpoint, network.to(device).eval(), role, device, compute)

    @property
    def dim(self) -> int:
        return self.checkpoint.config.dim

    @property
    def max_seq(self) -> int:
        return self.checkpoint.config.max_seq

    def tokenize(self, texts: Sequence[str]) -> Encoded:
        """Model input under the checkpoint's data contract: a text longer than max_seq keeps its last max_seq
        tokens when it is a context, its first otherwise, exactly as in training."""
        rows = self.checkpoint.data.encode(self.checkpoint.tokenizer, texts, self.role)
        return Encoded(
            torch.from_numpy(rows.ids).to(self.device),
            torch.from_numpy(rows.valid).to(self.device),
            rows.token_counts,
            rows.truncated,
            rows.kept_counts,
        )

    @torch.no_grad()
    def pool(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Pooled latents [B, dim], float32 on the device, of token ids [B, T] with their validity mask."""
        with autocast(self.device, self.precision):
            latents = self.network(ids, valid)
        return self.network.pool(latents.float(), ids, valid)

    @torch.no_grad()
    def embed(self, encoded: Encoded) -> torch.Tensor:
        """Pooled latents [B, dim], float32 on the CPU, of texts already tokenized."""
        return self.pool(encoded.ids, encoded.valid).float().cpu()

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        normalize: bool = False,
        progress: bool = False,
    ) -> np.ndarray:
        """Embeddings [N, dim] float32 of the texts, in their order. normalize: unit length (cosine = dot)."""
        texts = _as_texts(texts)
        starts = _batches(texts, batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")
        vectors = [self.embed(self.tokenize(texts[start : start + batch_size])) for start in starts]
        return _finish(vectors, self.dim, normalize)


def load_world(path: Path, device: torch.device) -> tuple[Checkpoint, WorldNetwork, EncoderNetwork]:
    """A world checkpoint, its torch module and its EMA teacher's encoder, on `device` in eval mode."""
    checkpoint, teacher_checkpoint = load_with_teacher(path, expect_kind=RunKind.WORLD)
    world = WorldNetwork(checkpoint.config)
    world.load_state_dict(checkpoint.tensors)
    teacher = EncoderNetwork(checkpoint.config)
    teacher.load_state_dict(teacher_checkpoint.module_state("encoder"))
    return checkpoint, world.to(device).eval(), teacher.to(device).eval()


class FrozenReplyEncoder:
    """The frozen target model of a world model trained with --target-model, as its reply encoder: texts -> the
    model's unit-length embeddings (a text is read whole; the frozen model applies its own length limit)."""

    def __init__(self, embedder: FrozenEmbedder) -> None:
        self.embedder = embedder

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        normalize: bool = False,
        progress: bool = False,
    ) -> np.ndarray:
        """Embeddings [N, dim] float32 of the texts, in their order (of unit length whatever `normalize`)."""
        texts = _as_texts(texts)
        _batches(texts, batch_size)  # the same argument check as Encoder.encode
        return self.embedder.encode(texts, batch_size=batch_size, progress=progress).numpy()


class WorldModel:
    """A trained world model: context -> state latent -> (action) -> predicted next-turn latent.

    `context_encoder` embeds contexts (the state), `reply_encoder` embeds replies as the targets the transition
    learned to predict: the EMA teacher, or with a target model (train-world --target-model) that frozen model;
    `network` is the torch module (textjepa.models.heads.WorldModel).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        network: WorldNetwork,
        teacher: EncoderNetwork,
        device: torch.device,
        precision: str = "fp32",
        target_embedder: FrozenEmbedder | None = None,
    ) -> None:
        self.checkpoint, self.network, self.device, self.precision = checkpoint, network, device, precision
        self.context_encoder = Encoder(checkpoint, network.encoder, Field.CONTEXT, device, precision)
        self.teacher_encoder = Encoder(checkpoint, teacher, Field.REPLY, device, precision)
        recorded = checkpoint.info.get(TARGET_MODEL_INFO)
        if target_embedder is not None and not target_embedder.is_recorded_in(recorded):
            raise TextJepaError(f"target model {target_embedder.name} is not the one {checkpoint.path.name} records")
        self._target_embedder = target_embedder
        self._index: RetrievalIndex | None = None
        self._decoders: dict[tuple, Decoder] = {}
        self._record_targets: dict[Path, torch.Tensor] = {}  # a token store's frozen next-turn embeddings

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
        device = as_device(device)
        compute = resolve_api_precision(precision, device, "serving")
        checkpoint, network, teacher = load_world(Path(path), device)
        return cls(checkpoint, network, teacher, device, compute, target_embedder)

    @property
    def config(self) -> ModelConfig:
        return self.checkpoint.config

    @property
    def dim(self) -> int:
        """The width of the state latent (what `encode` returns for contexts)."""
        return self.checkpoint.config.dim

    @property
    def predicted_dim(self) -> int:
        """The width of the predicted next latent and of reply embeddings (the target model's, with one)."""
        return self.checkpoint.config.predicted_dim

    @property
    def target_model(self) -> str:
        """The frozen target model's name as recorded by train-world --target-model ("" for the teacher's space)."""
        recorded = self.checkpoint.info.get(TARGET_MODEL_INFO)
        return str(recorded.get("name", "")) if recorded else ""

    def target_embedder(self) -> FrozenEmbedder:
        """The checkpoint's frozen target model, loaded once; a missing one is a one-line error naming it."""
        recorded = self.checkpoint.info.get(TARGET_MODEL_INFO)
        if recorded is None:
            raise TextJepaError(f"{self.checkpoint.path.name} has no target model (it predicts in its teacher's space)")
        if self._target_embedder is None:
            self._target_embedder = load_recorded_embedder(recorded, self.checkpoint.path, self.device)
        return self._target_embedder

    @property
    def reply_encoder(self) -> Encoder | FrozenReplyEncoder:
        """What embeds replies in the space the predictions live in."""
        if self.target_model:
            return FrozenReplyEncoder(self.target_embedder())
        return self.teacher_encoder

    def reply_latents(self, store: TokenStore, batch: Batch) -> torch.Tensor:
        """The next turns of a batch of store records in the reply space [B, predicted_dim] on the device: the
        teacher's pooled latents, or the frozen target model's embeddings (computed once per store, cached beside
        it). Training's retrieval index and eval-world's candidates are embedded here."""
        if not self.target_model:
            ids = torch.from_numpy(batch.ids["next"]).to(self.device)
            valid = torch.from_numpy(batch.valid["next"]).to(self.device)
            return self.teacher_encoder.pool(ids, valid)
        if store.path not in self._record_targets:
            targets = record_targets(self.target_embedder(), store, self.checkpoint.tokenizer)
            self._record_targets[store.path] = targets.to(self.device)
        return self._record_targets[store.path][torch.from_numpy(batch.index).to(self.device)]

    def copy_latents(self, store: TokenStore, batch: Batch, state: torch.Tensor) -> torch.Tensor:
        """eval-world's "copy the context" prediction in the reply space: the state itself, or with a target model
        the frozen model's embedding of the context (that model's zero-shot retrieval)."""
        if not self.target_model:
            return state
        contexts = record_texts(store, self.checkpoint.tokenizer, "context", batch.index)
        return self.target_embedder().encode(contexts).to(self.device)

    def encoder(self, kind: EncodeKind = "context") -> Encoder | FrozenReplyEncoder:
        if kind not in ("context", "reply"):
            raise TextJepaError(f"kind must be 'context' or 'reply', got {kind!r}")
        return self.context_encoder if kind == "context" else self.reply_encoder

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
        return self.encoder(kind).encode(texts, batch_size=batch_size, normalize=normalize, progress=progress)

    def action_ids(self, action: str, count: int) -> torch.Tensor:
        if action not in self.config.actions:
            raise TextJepaError(f"unknown action {action!r}; the model knows {self.config.actions}")
        return torch.full((count,), self.config.actions.index(action), dtype=torch.long, device=self.device)

    @torch.no_grad()
    def transition(
        self, ids: torch.Tensor, valid: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(state [B, dim], predicted next latent [B, predicted_dim]) on the device, for tokenized contexts and
        action ids."""
        state = self.context_encoder.pool(ids, valid)
        with autocast(self.device, self.precision):
            predicted = self.network.predict(state, actions)
        return state, predicted.float()

    @torch.no_grad()
    def predict(self, encoded: Encoded, action: str = DEFAULT_ACTION) -> tuple[torch.Tensor, torch.Tensor]:
        """(state, predicted next latent) on the device for contexts already tokenized."""
        return self.transition(encoded.ids, encoded.valid, self.action_ids(action, len(encoded.kept_counts)))

    def predict_next(
        self,
        contexts: str | Sequence[str],
        action: str = DEFAULT_ACTION,
        batch_size: int = DEFAULT_BATCH_SIZE,
        normalize: bool = False,
    ) -> np.ndarray:
        """The predicted next-turn latents [N, dim] float32 of contexts (`User: ...\\nAssistant: ...`) under
        an action; comparable with encode(replies, kind="reply")."""
        contexts = _as_texts(contexts)
        vectors = []
        for start in _batches(contexts, batch_size):
            _, predicted = self.predict(self.context_encoder.tokenize(contexts[start : start + batch_size]), action)
            vectors.append(predicted.float().cpu())
        return _finish(vectors, self.predicted_dim, normalize)

    def retrieval_index(self) -> RetrievalIndex:
        """The training replies' teacher latents written beside the checkpoint by train-world (loaded once)."""
        from textjepa.decoders.retrieval import RetrievalIndex

        if self._index is None:
            self._index = RetrievalIndex.load(self.checkpoint.path)
        return self._index

    def nearest_replies(
        self, context: str | Sequence[dict], k: int = 5, action: str = DEFAULT_ACTION
    ) -> list[tuple[str, float]]:
        """The k training replies whose teacher latents are nearest (cosine) to the predicted next latent: what
        the retrieval decoder answers (`infer --top-k`). context: a context text as written (the training form
        `User: ...`), or OpenAI-style messages."""
        if k < 1:
            raise TextJepaError(f"k must be at least 1, got {k}")
        text = context if isinstance(context, str) else conversation_context(context)
        if not text.strip():
            raise TextJepaError("the context is empty")
        predicted = self.predict_next([text], action=action)[0]
        return self.retrieval_index().nearest(torch.from_numpy(predicted), k)

    @torch.no_grad()
    def condition(
        self, contexts: Sequence[str], ablate: bool = False, action: str = DEFAULT_ACTION
    ) -> tuple[list[Conditioning], Encoded]:
        """What the decoders read for each context: state (in the prediction's space), predicted next latent and
        the conditioning head's vector (zeros when ablated), on the CPU; with the tokenized contexts (for token
        counts)."""
        encoded = self.context_encoder.tokenize(contexts)
        state, predicted = self.predict(encoded, action)
        with autocast(self.device, self.precision):
            vector = self.network.conditioning_head(predicted)
            # The decoders compare the state with the prediction and query the index with it (ablation): with a
            # target model it is taken into that space through the target head (what an idle transition predicts).
            state = self.network.to_target_space(state).float()
        vector = vector.float()  # decoders and clients get fp32 vectors whichever precision computed them
        if ablate:
            vector = torch.zeros_like(vector)
        out = [
            Conditioning(predicted=predicted[i].cpu(), state=state[i].cpu(), vector=vector[i].cpu(), ablated=ablate)
            for i in range(len(contexts))
        ]
        return out, encoded

    def prepare(
        self, messages: Sequence[dict], ablate: bool = False, action: str = DEFAULT_ACTION
    ) -> tuple[str, Conditioning, int, list[str]]:
        """(context text, conditioning, tokens the model saw, notes) for a conversation."""
        context = conversation_context(messages)
        if not context.strip():
            raise TextJepaError("the prompt is empty")
        [conditioning], encoded = self.condition([context], ablate=ablate, action=action)
        notes = []
        if encoded.truncated[0]:
            notes.append(
                f"prompt truncated from {encoded.token_counts[0]} to the last {self.config.max_seq} tokens (max_seq)"
            )
        return context, conditioning, encoded.kept_counts[0], notes

    def decoder(self, name: str = "retrieval", **options) -> Decoder:
        """A decoder for this model (loaded once per name and options): "retrieval" (offline, the nearest
        training reply), "transformers" or "llamacpp" (`decoder_model=`, optionally `bridge=`)."""
        from textjepa.decoders.registry import load_decoder

        key = (name, tuple(sorted(options.items())))
        if key not in self._decoders:
            self._decoders[key] = load_decoder(
                name, self.checkpoint.path, world_checkpoint=self.checkpoint, device=self.device, **options
            )
        return self._decoders[key]

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
        messages = as_messages(messages)
        _, conditioning, _, _ = self.prepare(messages, ablate)
        return self.decoder(decoder, **decoder_options).generate(messages, conditioning, max_new_tokens).text
