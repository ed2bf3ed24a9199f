"""train-world --backbone-mode frozen: every record's pooled context and next-turn latent by the frozen encoder,
computed once and cached beside the token store.

V-JEPA 2-AC's recipe for text: the encoder does not train, so its latents of the data never change and the
transition can train on them directly, without a forward pass of the encoder per step. They are computed batched
(records sorted by length, so little padding), exactly as the inference core pools a text (the data contract's cut
to max_seq, the run's compute precision), and written atomically under a key of the encoder's weights, max_seq and
precision: a rerun on the same store reads them back, and a different encoder never reads another's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from textjepa.data.contract import Field, pad_rows
from textjepa.data.tokens import TokenStore
from textjepa.inference.encoding import EncoderNetwork, pooled_latents
from textjepa.io import write_safetensors

LATENTS_FORMAT = "textjepa-record-latents-1"
FIELDS = (Field.CONTEXT, Field.REPLY)


@dataclass
class RecordLatents:
    """Pooled latents [records, dim] of every record's context and next turn, float32 on one device."""

    context: torch.Tensor
    next: torch.Tensor

    def to(self, device: torch.device) -> RecordLatents:
        return RecordLatents(self.context.to(device), self.next.to(device))


def encoder_digest(encoder: EncoderNetwork) -> str:
    """A digest of the encoder's tensors (names and bytes): the identity its latents are cached under."""
    digest = hashlib.sha256()
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def latents_path(store: TokenStore, digest: str, max_seq: int, precision: str) -> Path:
    """Beside the token store, whose folder name already keys the corpus and the tokenizer."""
    key = hashlib.sha256(f"{LATENTS_FORMAT}|{digest}|{max_seq}|{precision}".encode()).hexdigest()[:16]
    return store.path.parent / f"{store.path.name}.latents-{key}.safetensors"


def _read_cached(path: Path, digest: str, records: int) -> RecordLatents | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {field: handle.get_tensor(field) for field in handle.keys()}
    except Exception:  # a foreign or damaged file is computed anew (and replaced whole)
        return None
    if metadata.get("format") != LATENTS_FORMAT or metadata.get("encoder_sha256") != digest:
        return None
    if any(field.value not in tensors or len(tensors[field.value]) != records for field in FIELDS):
        return None
    return RecordLatents(tensors[Field.CONTEXT.value], tensors[Field.REPLY.value])


@torch.no_grad()
def _encode_field(
    encoder: EncoderNetwork,
    store: TokenStore,
    field: Field,
    max_seq: int,
    device: torch.device,
    precision: str,
    batch_size: int,
    bar,
) -> torch.Tensor:
    tokens = store.fields[field.value]
    count = len(store)
    # Shortest first: a batch pads to its longest row, so rows of like length waste no work.
    order = np.argsort(np.minimum(tokens.lengths(np.arange(count)), max_seq), kind="stable")
    out = torch.zeros(count, encoder.dim)
    for start in range(0, count, batch_size):
        chosen = order[start : start + batch_size]
        ids, valid = pad_rows([tokens.record(int(i)) for i in chosen], field, max_seq)
        ids_t, valid_t = torch.from_numpy(ids).to(device), torch.from_numpy(valid).to(device)
        out[torch.from_numpy(chosen)] = pooled_latents(encoder, ids_t, valid_t, device, precision).float().cpu()
        if bar is not None:
            bar.update(len(chosen))
    return out


def record_latents(
    encoder: EncoderNetwork,
    store: TokenStore,
    max_seq: int,
    device: torch.device,
    precision: str,
    batch_size: int = 64,
    progress: bool = False,
) -> RecordLatents:
    """The frozen encoder's pooled latents of every record's context and next turn (cached; see the module doc),
    on the CPU."""
    digest = encoder_digest(encoder)
    path = latents_path(store, digest, max_seq, precision)
    cached = _read_cached(path, digest, len(store))
    if cached is not None:
        print(f"frozen latents: {path} (cached)")
        return cached
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(store) * len(FIELDS), desc="frozen latents", unit="text")
    was_training = encoder.training
    encoder.eval()
    try:
        tensors = {
            field.value: _encode_field(encoder, store, field, max_seq, device, precision, batch_size, bar)
            for field in FIELDS
        }
    finally:
        encoder.train(was_training)
        if bar is not None:
            bar.close()
    metadata = {"format": LATENTS_FORMAT, "encoder_sha256": digest, "max_seq": str(max_seq), "precision": precision}
    write_safetensors(path, tensors, metadata)
    print(f"frozen latents: {path}")
    return RecordLatents(tensors[Field.CONTEXT.value], tensors[Field.REPLY.value])
