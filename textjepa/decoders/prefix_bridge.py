"""The prefix bridge: a projector from the world model's predicted next latent to K soft-prompt
embeddings of an LLM, and its checkpoint (the `--bridge` file the transformers and llama.cpp decoders read;
train-bridge, in textjepa/bridge/, trains it).

The checkpoint is its own safetensors file. Its metadata names the decoder model (path, hidden size,
vocabulary size, and a probe of its token-embedding matrix) and the world model (file name, tokenizer
hash, config, and a hash of the encoder + transition weights the projector's input comes from), so
that using it with another LM or another world model is a clear error instead of noise.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from textjepa.config import check_prefix_tokens
from textjepa.data.tokens import tokenizer_hash
from textjepa.errors import TextJepaError
from textjepa.io import write_safetensors

BRIDGE_FORMAT = "textjepa-bridge"
BRIDGE_VERSION = 1
PROBE_ROWS = 16
PROBE_COLS = 32
# Quantisation (e.g. Q4_1 vs the float original) keeps the probe's cosine above ~0.99; unrelated models ~0.
PROBE_MIN_COSINE = 0.9


class PrefixProjector(nn.Module):
    """Linear -> GELU -> Linear (xRAG/LLaVA style): predicted latent [B, dim] -> prefix [B, K, hidden].

    The input is scaled to unit length (times sqrt(dim)) because the world model is trained on
    directions (cosine), and a zero input (the ablated conditioning) stays exactly zero. The output is
    multiplied by the LM's token-embedding scale so that the prefix starts in the range of real tokens.
    """

    def __init__(
        self, latent_dim: int, hidden_size: int, prefix_tokens: int, width: int = 0, embed_scale: float = 1.0
    ) -> None:
        super().__init__()
        check_prefix_tokens(prefix_tokens)
        self.latent_dim, self.hidden_size, self.prefix_tokens = latent_dim, hidden_size, prefix_tokens
        self.width = width or hidden_size
        self.net = nn.Sequential(
            nn.Linear(latent_dim, self.width), nn.GELU(), nn.Linear(self.width, prefix_tokens * hidden_size)
        )
        self.register_buffer("embed_scale", torch.tensor(float(embed_scale)))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = F.normalize(latent.float(), dim=-1) * math.sqrt(self.latent_dim)
        out = self.net(x) * self.embed_scale
        return out.view(-1, self.prefix_tokens, self.hidden_size)


@dataclass
class DecoderFingerprint:
    """What identifies an LM for a bridge: shapes plus a probe of its token embeddings."""

    name: str
    path: str
    hidden_size: int
    vocab_size: int
    probe: torch.Tensor = field(repr=False)

    def describe(self) -> str:
        return f"{self.name} (hidden {self.hidden_size}, vocab {self.vocab_size})"


def probe_rows(vocab_size: int) -> list[int]:
    return sorted({round(i * (vocab_size - 1) / (PROBE_ROWS - 1)) for i in range(PROBE_ROWS)})


def fingerprint_from_embeddings(weight: torch.Tensor, name: str, path: str) -> DecoderFingerprint:
    vocab, hidden = weight.shape
    rows = torch.tensor(probe_rows(vocab), dtype=torch.long, device=weight.device)
    probe = weight.index_select(0, rows)[:, :PROBE_COLS].float().cpu().contiguous()
    return DecoderFingerprint(name, path, int(hidden), int(vocab), probe)


def world_identity(checkpoint) -> dict:
    """The world model a bridge's inputs come from: file, tokenizer, config and a hash of the
    encoder + transition weights (the bridge reads the transition's output)."""
    digest = hashlib.sha256()
    for key in sorted(checkpoint.tensors):
        if key.startswith(("encoder.", "transition.", "target_head.")):  # what the predicted latent depends on
            tensor = checkpoint.tensors[key].detach().cpu().contiguous()
            digest.update(key.encode())
            digest.update(tensor.float().numpy().tobytes())
    return {
        "file": checkpoint.path.name,
        "tokenizer_hash": tokenizer_hash(checkpoint.tokenizer),
        "config": checkpoint.config.to_dict(),
        "weights_hash": digest.hexdigest()[:16],
    }


@dataclass
class Bridge:
    projector: PrefixProjector
    decoder: DecoderFingerprint
    world: dict
    info: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def prefix_tokens(self) -> int:
        return self.projector.prefix_tokens

    def check_decoder(self, other: DecoderFingerprint) -> None:
        """Same shapes and (nearly) the same token embeddings, or a one-line error."""
        mine = self.decoder
        where = f"bridge {self.path.name if self.path else ''} was trained for {mine.describe()}"
        if (mine.hidden_size, mine.vocab_size) != (other.hidden_size, other.vocab_size):
            raise TextJepaError(
                f"{where}, not for {other.describe()}; train a bridge for this model (textjepa train-bridge)"
            )
        a, b = mine.probe.flatten().float(), other.probe.flatten().float()
        cosine = float(F.cosine_similarity(a, b, dim=0)) if a.shape == b.shape else -1.0
        if cosine < PROBE_MIN_COSINE:
            raise TextJepaError(
                f"{where}; {other.name} has other token embeddings (probe cosine {cosine:.2f}): "
                "another LM; train a bridge for it (textjepa train-bridge) or pass the bridge's model"
            )

    def check_world(self, checkpoint) -> None:
        mine, other = self.world, world_identity(checkpoint)
        where = f"bridge {self.path.name if self.path else ''} was trained for world model {mine['file']}"
        if mine["tokenizer_hash"] != other["tokenizer_hash"] or mine["config"] != other["config"]:
            raise TextJepaError(
                f"{where}, not for {other['file']} (another tokenizer or shape); train a bridge for this world model"
            )
        if mine["weights_hash"] != other["weights_hash"]:
            raise TextJepaError(
                f"{where} (weights {mine['weights_hash']}), but {other['file']} has other weights "
                f"({other['weights_hash']}); train a bridge for this world model"
            )


def save_bridge(path: Path, bridge: Bridge) -> None:
    """Atomically: temp file in the same directory, then rename."""
    projector = bridge.projector
    tensors = {f"projector.{k}": v.detach().cpu().contiguous() for k, v in projector.state_dict().items()}
    tensors["fingerprint.embedding_probe"] = bridge.decoder.probe.contiguous()
    decoder = {k: v for k, v in asdict(bridge.decoder).items() if k != "probe"}
    metadata = {
        "format": BRIDGE_FORMAT,
        "version": str(BRIDGE_VERSION),
        "projector": json.dumps(
            {
                "latent_dim": projector.latent_dim,
                "hidden_size": projector.hidden_size,
                "prefix_tokens": projector.prefix_tokens,
                "width": projector.width,
            }
        ),
        "decoder": json.dumps(decoder),
        "world": json.dumps(bridge.world),
        "info": json.dumps(bridge.info),
    }
    write_safetensors(path, tensors, metadata)


def load_bridge(path: str | Path) -> Bridge:
    path = Path(path)
    if not path.is_file():
        raise TextJepaError(f"bridge not found: {path} (train one with textjepa train-bridge)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != BRIDGE_FORMAT:
                raise TextJepaError(f"{path} is not a textjepa prefix bridge (train one with textjepa train-bridge)")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except TextJepaError:
        raise
    except Exception as exc:  # safetensors raises its own types for foreign or damaged files
        raise TextJepaError(f"{path} is not a readable bridge file ({exc})") from exc
    shape = json.loads(metadata["projector"])
    projector = PrefixProjector(shape["latent_dim"], shape["hidden_size"], shape["prefix_tokens"], shape["width"])
    projector.load_state_dict({k[len("projector.") :]: v for k, v in tensors.items() if k.startswith("projector.")})
    decoder = DecoderFingerprint(**json.loads(metadata["decoder"]), probe=tensors["fingerprint.embedding_probe"])
    return Bridge(
        projector=projector.eval(),
        decoder=decoder,
        world=json.loads(metadata["world"]),
        info=json.loads(metadata.get("info", "{}")),
        path=path,
    )
