"""Texts -> model input under the checkpoint's data contract -> pooled latents, exactly as in training.

A context keeps its LAST max_seq tokens (its latest turns), a reply or a plain text line its FIRST
(textjepa/data/contract.py); a vector is the encoder's pooling of its token latents over the real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from textjepa.checkpoint import Checkpoint, load_checkpoint, load_teacher
from textjepa.data.contract import Field
from textjepa.errors import TextJepaError
from textjepa.io import RunKind
from textjepa.models.backbone import PretrainedEncoder, build_encoder
from textjepa.models.encoder import Encoder
from textjepa.precision import autocast
from textjepa.runtime import choose_precision, resolve_device

# The encoder of a checkpoint: textjepa's own, or a pretrained backbone with the same interface.
EncoderNetwork = Encoder | PretrainedEncoder

DeviceLike = str | torch.device | None


def as_device(device: DeviceLike) -> torch.device:
    """A device by name: "auto" (CUDA when there is one, else the CPU), "cpu", "cuda[:N]"; or a torch.device."""
    if isinstance(device, torch.device):
        return device
    return resolve_device(device or "auto")


def compute_precision(requested: str, device: torch.device, work: str, dim: int | None = None) -> str:
    """The compute precision ("fp32" or "bf16") of a loaded model from --precision's values (auto, fp32, bf16):
    the CLI's rule for the same work (an encoder encodes as `embed` does, a world model answers as `infer` and
    `serve` do), so the Python API and the commands give the same vectors on the same machine."""
    return choose_precision(requested, device, work=work, dim=dim).precision


def as_texts(texts: str | Sequence[str]) -> list[str]:
    """One text or a list of texts (a bare string is one text, not a list of characters)."""
    if isinstance(texts, str):
        return [texts]
    listed = list(texts)
    if not all(isinstance(text, str) for text in listed):
        raise TextJepaError("texts must be strings")
    return listed


def as_array(vectors: torch.Tensor, normalize: bool = False) -> np.ndarray:
    """Vectors [N, dim] as float32 numpy (what the Python API and `embed` return); normalize: unit rows."""
    return (F.normalize(vectors, dim=-1) if normalize else vectors).float().cpu().numpy()


@torch.no_grad()
def pooled_latents(
    network: EncoderNetwork, ids: torch.Tensor, valid: torch.Tensor, device: torch.device, precision: str
) -> torch.Tensor:
    """The one way token ids become pooled latents [B, dim] (float32) at a compute precision: the encoder's forward
    under autocast, its pooling in fp32 (train-world's frozen mode caches exactly these)."""
    with autocast(device, precision):
        latents = network.pooling_latents(ids, valid)
    return network.pool(latents.float(), ids, valid)


def batch_starts(texts: Sequence, batch_size: int) -> range:
    if batch_size < 1:
        raise TextJepaError(f"batch_size must be at least 1, got {batch_size}")
    return range(0, len(texts), batch_size)


@dataclass
class Encoded:
    """Texts as model input (on the model's device), with how many tokens each had before the cut."""

    ids: torch.Tensor
    valid: torch.Tensor
    token_counts: list[int]  # tokens of each text
    truncated: list[bool]
    kept_counts: list[int]  # tokens of each text the model sees (at most max_seq)


@dataclass
class Embedded:
    """Pooled latents of texts, float32 on the CPU, with the tokens of each the model saw."""

    vectors: torch.Tensor  # [N, dim]
    token_counts: list[int]


def encoder_role(kind: RunKind, teacher: bool) -> Field:
    """What a checkpoint's encoder reads: a world model's online encoder contexts, its EMA teacher replies; a
    latent checkpoint's encoders plain text lines."""
    if RunKind(kind) is RunKind.WORLD:
        return Field.REPLY if teacher else Field.CONTEXT
    return Field.TEXT


class TextEncoder:
    """A trained encoder and the role its texts play under the checkpoint's data contract (context, reply or a
    plain text line)."""

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
    ) -> TextEncoder:
        """A checkpoint's encoder: a latent checkpoint's (plain text lines), a world checkpoint's (contexts) or,
        teacher: the EMA teacher saved beside it (`_teacher.safetensors`; a world model's reads replies).
        precision: as --precision (auto, fp32 or bf16; see `compute_precision`)."""
        device = as_device(device)
        checkpoint = load_checkpoint(path)
        compute = compute_precision(precision, device, "encoding", checkpoint.config.dim)
        source = load_teacher(checkpoint) if teacher else checkpoint
        network = build_encoder(checkpoint.config)
        network.load_state_dict(source.module_state("encoder"))
        return cls(checkpoint, network.to(device).eval(), encoder_role(checkpoint.kind, teacher), device, compute)

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
        return pooled_latents(self.network, ids, valid, self.device, self.precision)

    @torch.no_grad()
    def embed(self, encoded: Encoded) -> torch.Tensor:
        """Pooled latents [B, dim], float32 on the CPU, of texts already tokenized."""
        return self.pool(encoded.ids, encoded.valid).float().cpu()

    def embed_texts(self, texts: Sequence[str], batch_size: int, progress: bool = False) -> Embedded:
        """Pooled latents [N, dim] of the texts in their order, `batch_size` texts per forward pass."""
        starts = batch_starts(texts, batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="encode", unit="batch")
        vectors, counts = [], []
        for start in starts:
            encoded = self.tokenize(texts[start : start + batch_size])
            vectors.append(self.embed(encoded))
            counts += encoded.kept_counts
        return Embedded(torch.cat(vectors) if vectors else torch.zeros(0, self.dim), counts)
