"""A world checkpoint loaded for inference: context -> state latent -> (action) -> predicted next-turn latent.

`WorldInference` is the one place that runs a trained world model: it conditions the decoders, predicts for the
Python API, embeds the replies of the retrieval index (written at the end of train-world) and of eval-world, and
looks that index up. A world model trained with `--target-model` predicts in a frozen sentence-transformers model's
space: its replies are that model's embeddings, loaded on first use (the retrieval decoder reads only the index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from textjepa.checkpoint import Checkpoint, load_with_teacher
from textjepa.config import DEFAULT_ACTION, ModelConfig
from textjepa.data.contract import Field
from textjepa.decoders.base import Conditioning
from textjepa.errors import TextJepaError
from textjepa.inference.conversation import require_context
from textjepa.inference.encoding import (
    DeviceLike,
    Encoded,
    EncoderNetwork,
    TextEncoder,
    as_device,
    batch_starts,
    compute_precision,
)
from textjepa.io import RunKind
from textjepa.models.backbone import build_encoder
from textjepa.models.frozen import (
    TARGET_MODEL_INFO,
    FrozenEmbedder,
    load_recorded_embedder,
    record_targets,
    record_texts,
)
from textjepa.models.heads import WorldModel as WorldNetwork
from textjepa.precision import autocast

if TYPE_CHECKING:
    from textjepa.data.batches import Batch
    from textjepa.data.tokens import TokenStore
    from textjepa.decoders.retrieval import RetrievalIndex


def load_world(path: Path, device: torch.device) -> tuple[Checkpoint, WorldNetwork, EncoderNetwork]:
    """A world checkpoint, its torch module and its EMA teacher's encoder, on `device` in eval mode."""
    checkpoint, teacher_checkpoint = load_with_teacher(path, expect_kind=RunKind.WORLD)
    world = WorldNetwork(checkpoint.config)
    world.load_state_dict(checkpoint.tensors)
    teacher = build_encoder(checkpoint.config)
    teacher.load_state_dict(teacher_checkpoint.module_state("encoder"))
    return checkpoint, world.to(device).eval(), teacher.to(device).eval()


def ablated(conditioning: Conditioning) -> Conditioning:
    """The conditioning with its vector zeroed; decoders see `ablated` and drop it (an LLM gets a zero prefix,
    retrieval answers from the context latent)."""
    return replace(conditioning, vector=torch.zeros_like(conditioning.vector), ablated=True)


class WorldInference:
    """A trained world model on a device: `context_encoder` embeds contexts (the state), `teacher_encoder` replies
    (the EMA teacher); `network` is the torch module (textjepa.models.heads.WorldModel)."""

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
        self.context_encoder = TextEncoder(checkpoint, network.encoder, Field.CONTEXT, device, precision)
        self.teacher_encoder = TextEncoder(checkpoint, teacher, Field.REPLY, device, precision)
        recorded = checkpoint.info.get(TARGET_MODEL_INFO)
        if target_embedder is not None and not target_embedder.is_recorded_in(recorded):
            raise TextJepaError(f"target model {target_embedder.name} is not the one {checkpoint.path.name} records")
        self._target_embedder = target_embedder
        self._index: RetrievalIndex | None = None
        self._record_targets: dict[Path, torch.Tensor] = {}  # a token store's frozen next-turn embeddings

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: DeviceLike = "auto",
        precision: str = "auto",
        target_embedder: FrozenEmbedder | None = None,
    ) -> WorldInference:
        """A world checkpoint with its `_teacher` file beside it, computing at `precision` as --precision resolves
        it (the arguments are the Python API's, documented at `textjepa.api.WorldModel.load`)."""
        device = as_device(device)
        compute = compute_precision(precision, device, "serving")
        checkpoint, network, teacher = load_world(Path(path), device)
        return cls(checkpoint, network, teacher, device, compute, target_embedder)

    @property
    def config(self) -> ModelConfig:
        return self.checkpoint.config

    @property
    def target_model(self) -> str:
        """The frozen target model's name as recorded by train-world --target-model ("" for the teacher's space)."""
        recorded = self.checkpoint.info.get(TARGET_MODEL_INFO)
        return str(recorded.get("name", "")) if recorded else ""

    @property
    def frozen_backbone(self) -> bool:
        """Whether the encoder was kept frozen in training (train-world --backbone-mode frozen): its latents are then
        the backbone's own, and so are the teacher's."""
        return self.checkpoint.info.get("backbone_mode") == "frozen"

    def target_embedder(self) -> FrozenEmbedder:
        """The checkpoint's frozen target model, loaded once; a missing one is a one-line error naming it."""
        recorded = self.checkpoint.info.get(TARGET_MODEL_INFO)
        if recorded is None:
            raise TextJepaError(f"{self.checkpoint.path.name} has no target model (it predicts in its teacher's space)")
        if self._target_embedder is None:
            self._target_embedder = load_recorded_embedder(recorded, self.checkpoint.path, self.device)
        return self._target_embedder

    # --- the reply space: what the transition learned to predict -------------------------------------------

    def embed_replies(self, texts: Sequence[str], batch_size: int, progress: bool = False) -> torch.Tensor:
        """Replies [N, predicted_dim] float32 on the CPU in the prediction's space: the teacher's latents (a reply
        keeps its first max_seq tokens), or with a target model that model's unit-length embeddings (it reads a
        text whole and applies its own length limit)."""
        if not self.target_model:
            return self.teacher_encoder.embed_texts(texts, batch_size, progress).vectors
        batch_starts(texts, batch_size)  # the same argument check as the teacher's
        return self.target_embedder().encode(list(texts), batch_size=batch_size, progress=progress)

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

    @torch.no_grad()
    def context_states(self, batch: Batch) -> torch.Tensor:
        """The contexts of a batch of store records as `condition` gives the decoders their state [B, predicted_dim]
        float32 on the device: the retrieval index's training contexts, for recall."""
        ids = torch.from_numpy(batch.ids["context"]).to(self.device)
        valid = torch.from_numpy(batch.valid["context"]).to(self.device)
        return self.decoder_state(self.context_encoder.pool(ids, valid))

    def decoder_state(self, state: torch.Tensor) -> torch.Tensor:
        """A pooled context latent as the decoders read it, float32: the decoders compare it with the prediction
        and query the index with it (ablation, recall), so with a target model it is taken into that space through
        the target head (what an idle transition predicts)."""
        with autocast(self.device, self.precision):
            return self.network.to_target_space(state).float()

    def copy_latents(self, store: TokenStore, batch: Batch, state: torch.Tensor) -> torch.Tensor:
        """eval-world's "copy the context" prediction in the reply space: the state itself, or with a target model
        the frozen model's embedding of the context (that model's zero-shot retrieval)."""
        if not self.target_model:
            return state
        contexts = record_texts(store, self.checkpoint.tokenizer, "context", batch.index)
        return self.target_embedder().encode(contexts).to(self.device)

    # --- the transition ----------------------------------------------------------------------------------------

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

    def predict_texts(self, contexts: Sequence[str], action: str, batch_size: int) -> torch.Tensor:
        """The predicted next latents [N, predicted_dim] float32 on the CPU of context texts, in their order."""
        vectors = []
        for start in batch_starts(contexts, batch_size):
            _, predicted = self.predict(self.context_encoder.tokenize(contexts[start : start + batch_size]), action)
            vectors.append(predicted.float().cpu())
        return torch.cat(vectors) if vectors else torch.zeros(0, self.config.predicted_dim)

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
        state = self.decoder_state(state)
        vector = vector.float()  # decoders and clients get fp32 vectors whichever precision computed them
        out = [
            Conditioning(predicted=predicted[i].cpu(), state=state[i].cpu(), vector=vector[i].cpu())
            for i in range(len(contexts))
        ]
        return ([ablated(c) for c in out] if ablate else out), encoded

    def prepare(
        self, messages: Sequence[dict], ablate: bool = False, action: str = DEFAULT_ACTION
    ) -> tuple[str, Conditioning, int, list[str]]:
        """(context text, conditioning, tokens the model saw, notes) for a conversation."""
        context = require_context(messages)
        [conditioning], encoded = self.condition([context], ablate=ablate, action=action)
        notes = []
        if encoded.truncated[0]:
            notes.append(
                f"prompt truncated from {encoded.token_counts[0]} to the last {self.config.max_seq} tokens (max_seq)"
            )
        return context, conditioning, encoded.kept_counts[0], notes

    # --- the retrieval index -----------------------------------------------------------------------------------

    def retrieval_index(self) -> RetrievalIndex:
        """The training replies in the reply space, written beside the checkpoint by train-world (loaded once)."""
        from textjepa.decoders.retrieval import RetrievalIndex

        if self._index is None:
            self._index = RetrievalIndex.load(self.checkpoint.path)
        return self._index

    def nearest_replies(self, context: str, k: int, action: str = DEFAULT_ACTION) -> list[tuple[str, float]]:
        """The k training replies the retrieval decoder ranks first for a context, with their cosines to its predicted
        next latent: those recalled for a context the model was trained on, then the nearest to the prediction
        (`infer --top-k`)."""
        if k < 1:
            raise TextJepaError(f"k must be at least 1, got {k}")
        if not context.strip():
            raise TextJepaError("the context is empty")
        [conditioning], _ = self.condition([context], action=action)
        return self.retrieval_index().answer(conditioning.predicted, conditioning.state, k)[0]
