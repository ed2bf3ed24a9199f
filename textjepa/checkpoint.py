"""Artifacts on disk: self-describing safetensors checkpoints and the resumable training state.

Every write goes to a temporary name in the same directory and is renamed when complete, so a crash
never leaves a file that is later trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer

from textjepa.config import ModelConfig
from textjepa.data.tokens import atomic_write_text, tokenizer_from_string, tokenizer_hash, write_vocab_txt
from textjepa.errors import TextJepaError

FORMAT = "textjepa"
STATE_MAGIC = b"TEXTJEPA-STATE-1\n"
VOCAB_FILE_NAMES = {"latent": "vocab_latent.txt", "world": "vocab_world.txt"}


def model_path(out_dir: Path, kind: str, size: str) -> Path:
    return out_dir / f"model_{kind}_{size}.safetensors"


def teacher_path(path: Path) -> Path:
    return path.with_name(path.name.replace(".safetensors", "_teacher.safetensors"))


def state_path(path: Path) -> Path:
    return path.with_name(path.name.replace(".safetensors", ".state.pt"))


def pick_model_file(paths: list[str]) -> str:
    """`--init-encoder model_latent_*.safetensors` (the seed's form) expands in the shell to the checkpoint
    and its teacher; the checkpoint is the one that is not `_teacher`."""
    models = [p for p in paths if not p.endswith("_teacher.safetensors")]
    if len(models) != 1:
        raise TextJepaError(f"expected one checkpoint (its _teacher file is found beside it), got: {' '.join(paths)}")
    return models[0]


def ensure_writable_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TextJepaError(f"cannot create output directory {directory}: {exc.strerror}") from exc
    probe = directory / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TextJepaError(f"output directory {directory} is not writable: {exc.strerror}") from exc


@dataclass
class Checkpoint:
    path: Path
    kind: str
    role: str
    config: ModelConfig
    tensors: dict[str, torch.Tensor]
    info: dict  # everything else from the metadata: step, training settings, metrics
    tokenizer: Tokenizer

    def module_state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


def save_checkpoint(
    path: Path,
    kind: str,
    role: str,
    config: ModelConfig,
    tensors: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    info: dict,
) -> None:
    metadata = {
        "format": FORMAT,
        "kind": kind,
        "role": role,
        "config": json.dumps(config.to_dict()),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        # Embedded so that loading needs only this file, whatever else is in the directory.
        "tokenizer": tokenizer.to_str(),
        "info": json.dumps(info),
    }
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(plain, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # safetensors creates files private to the user; checkpoints are meant to be shared
    os.replace(tmp, path)


def save_tokenizer_files(out_dir: Path, kind: str, tokenizer: Tokenizer) -> None:
    atomic_write_text(out_dir / "tokenizer.json", tokenizer.to_str())
    write_vocab_txt(tokenizer, out_dir / VOCAB_FILE_NAMES[kind])


def load_checkpoint(path: str | Path, expect_kind: str | None = None) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise TextJepaError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise TextJepaError(f"{path} is not a textjepa checkpoint (no textjepa metadata)")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except TextJepaError:
        raise
    except Exception as exc:  # safetensors raises its own error types for foreign or damaged files
        raise TextJepaError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc
    kind = metadata["kind"]
    if expect_kind is not None and kind != expect_kind:
        raise TextJepaError(f"{path} is a {kind} checkpoint, expected a {expect_kind} checkpoint")
    tokenizer = tokenizer_from_string(metadata["tokenizer"])
    if tokenizer_hash(tokenizer) != metadata["tokenizer_hash"]:
        raise TextJepaError(f"{path}: embedded tokenizer does not match its recorded hash (damaged file?)")
    return Checkpoint(
        path=path,
        kind=kind,
        role=metadata["role"],
        config=ModelConfig.from_dict(json.loads(metadata["config"])),
        tensors=tensors,
        info=json.loads(metadata["info"]),
        tokenizer=tokenizer,
    )


def check_shape_overrides(config: ModelConfig, overrides: dict, source: Path) -> None:
    """Shape arguments given on the command line must agree with the checkpoint: never a silent reshape."""
    for name, value in overrides.items():
        if value is None:
            continue
        have = config.vocab_size if name == "max_vocab" else getattr(config, name)
        if have != value:
            raise TextJepaError(
                f"{name}={value} disagrees with the checkpoint {source.name} ({name}={have}); "
                "omit shape arguments, the checkpoint describes itself"
            )


# ---------------------------------------------------------------- training state (resume)


def save_training_state(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as handle:
        handle.write(STATE_MAGIC + digest + b"\n" + payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_training_state(path: Path) -> dict:
    if not path.is_file():
        raise TextJepaError(f"training state not found: {path}")
    data = path.read_bytes()
    header_end = len(STATE_MAGIC) + 65
    if not data.startswith(STATE_MAGIC) or len(data) < header_end:
        raise TextJepaError(f"{path} is not a textjepa training state")
    digest, payload = data[len(STATE_MAGIC) : header_end - 1], data[header_end:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise TextJepaError(f"training state {path} is corrupt or truncated (checksum mismatch); not loading it")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def find_latest_state(out_dir: Path, kind: str) -> Path | None:
    """The newest training state of this kind in out_dir whose checksum verifies."""
    candidates = sorted(out_dir.glob(f"model_{kind}_*.state.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        try:
            load_training_state(candidate)
        except TextJepaError:
            continue
        return candidate
    return None
