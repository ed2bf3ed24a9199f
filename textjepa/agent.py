"""The agent: encode(prompt) -> transition(reply) -> bridge -> decoder -> text.

Loads a world checkpoint once; used by `infer` and by the HTTP server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from textjepa.checkpoint import Checkpoint, check_shape_overrides, load_with_teacher
from textjepa.config import DEFAULT_ACTION
from textjepa.data.contract import Field
from textjepa.data.tokens import check_vocab_argument
from textjepa.decoders.base import Conditioning, Decoder, Generation
from textjepa.errors import TextJepaError
from textjepa.io import RunKind
from textjepa.models.encoder import Encoder, masked_mean
from textjepa.models.heads import WorldModel
from textjepa.precision import autocast

ROLE_PREFIXES = {"user": "User: ", "assistant": "Assistant: "}


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


def load_world(path: Path, device: torch.device) -> tuple[Checkpoint, WorldModel, Encoder]:
    checkpoint, teacher_checkpoint = load_with_teacher(path, expect_kind=RunKind.WORLD)
    world = WorldModel(checkpoint.config)
    world.load_state_dict(checkpoint.tensors)
    teacher = Encoder(checkpoint.config)
    teacher.load_state_dict(teacher_checkpoint.module_state("encoder"))
    return checkpoint, world.to(device).eval(), teacher.to(device).eval()


@dataclass
class Encoded:
    ids: torch.Tensor
    valid: torch.Tensor
    token_counts: list[int]  # tokens of each text
    truncated: list[bool]
    kept_counts: list[int]  # tokens of each text the model sees (at most max_seq)


@dataclass
class Reply:
    generation: Generation
    conditioning: Conditioning
    context: str
    prompt_tokens: int
    notes: list[str] = field(default_factory=list)


class Agent:
    def __init__(
        self,
        checkpoint: Checkpoint,
        world: WorldModel,
        teacher: Encoder,
        decoder: Decoder,
        device: torch.device,
        precision: str = "fp32",
    ) -> None:
        self.checkpoint, self.world, self.teacher, self.decoder, self.device = (
            checkpoint,
            world,
            teacher,
            decoder,
            device,
        )
        self.config = checkpoint.config
        self.tokenizer = checkpoint.tokenizer
        # "fp32" or "bf16" (autocast over the fp32 weights), as resolved from --precision by the caller.
        self.precision = precision

    @classmethod
    def load(
        cls,
        model_path: str | Path,
        decoder: str = "retrieval",
        device: torch.device | None = None,
        vocab: str | None = None,
        shape_overrides: dict | None = None,
        precision: str = "fp32",
        **decoder_options,
    ) -> Agent:
        from textjepa.decoders.registry import load_decoder

        if precision not in ("fp32", "bf16"):
            raise TextJepaError(f"precision must be fp32 or bf16 (resolve 'auto' at the caller), got {precision!r}")
        device = device or torch.device("cpu")
        checkpoint, world, teacher = load_world(Path(model_path), device)
        check_shape_overrides(checkpoint.config, shape_overrides or {}, checkpoint.path)
        if vocab:
            check_vocab_argument(vocab, checkpoint.tokenizer)
        backend = load_decoder(decoder, checkpoint.path, world_checkpoint=checkpoint, device=device, **decoder_options)
        return cls(checkpoint, world, teacher, backend, device, precision)

    @property
    def model_name(self) -> str:
        return self.checkpoint.path.name

    def tokenize(self, texts: Sequence[str]) -> Encoded:
        """Model input for contexts under the checkpoint's data contract: a text longer than max_seq keeps its
        last max_seq tokens (the latest turns), exactly as in training."""
        rows = self.checkpoint.data.encode(self.tokenizer, texts, Field.CONTEXT)
        return Encoded(
            torch.from_numpy(rows.ids).to(self.device),
            torch.from_numpy(rows.valid).to(self.device),
            rows.token_counts,
            rows.truncated,
            rows.kept_counts,
        )

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Pooled encoder latents (the online encoder, as the world model's state)."""
        return self.embed_encoded(self.tokenize(texts))

    @torch.no_grad()
    def embed_encoded(self, encoded: Encoded) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return masked_mean(self.world.encoder(encoded.ids, encoded.valid), encoded.valid).float().cpu()

    @torch.no_grad()
    def condition(
        self, contexts: Sequence[str], ablate: bool = False, action: str = DEFAULT_ACTION
    ) -> tuple[list[Conditioning], Encoded]:
        if action not in self.config.actions:
            raise TextJepaError(f"unknown action {action!r}; the model knows {self.config.actions}")
        encoded = self.tokenize(contexts)
        actions = torch.full((len(contexts),), self.config.actions.index(action), dtype=torch.long, device=self.device)
        with autocast(self.device, self.precision):
            state = masked_mean(self.world.encoder(encoded.ids, encoded.valid), encoded.valid)
            predicted = self.world.transition(state, actions)
            vector = self.world.conditioning_head(predicted)
        # Decoders and clients get fp32 vectors whichever precision computed them.
        state, predicted, vector = state.float(), predicted.float(), vector.float()
        if ablate:
            vector = torch.zeros_like(vector)
        out = [
            Conditioning(predicted=predicted[i].cpu(), state=state[i].cpu(), vector=vector[i].cpu(), ablated=ablate)
            for i in range(len(contexts))
        ]
        return out, encoded

    def prepare(self, messages: Sequence[dict], ablate: bool = False) -> tuple[str, Conditioning, int, list[str]]:
        context = conversation_context(messages)
        if not context.strip():
            raise TextJepaError("the prompt is empty")
        [conditioning], encoded = self.condition([context], ablate=ablate)
        notes = []
        if encoded.truncated[0]:
            notes.append(
                f"prompt truncated from {encoded.token_counts[0]} to the last {self.config.max_seq} tokens (max_seq)"
            )
        return context, conditioning, encoded.kept_counts[0], notes

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
