"""Artifacts on disk: self-describing safetensors checkpoints and the resumable training state.

Every write goes through textjepa.io (a temporary name in the same directory, renamed when complete), so a
crash never leaves a file that is later trusted. A checkpoint records its model config, tokenizer, run
settings and data contract (data/contract.py); this module alone writes and reads them.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from textjepa.data.contract import DataContract
from textjepa.data.tokens import tokenizer_from_string, tokenizer_hash, write_vocab_txt
from textjepa.errors import TextJepaError
from textjepa.io import (
    RunFiles,
    RunKind,
    atomic_write_bytes,
    atomic_write_text,
    folder_given_as_file,
    write_safetensors,
)
from textjepa.models.config import ModelConfig

FORMAT = "textjepa"
STATE_MAGIC = b"TEXTJEPA-STATE-1\n"
# A teacher file's metadata "encoder" when it holds no tensors: its encoder is the online checkpoint's (a frozen
# backbone is its own teacher), read from the model file instead of written twice.
ENCODER_IN_ONLINE = "online"


def pick_model_file(paths: list[str]) -> str:
    """`--init-encoder model_latent_*.safetensors` (the seed's form) expands in the shell to the checkpoint
    and its teacher; the checkpoint is the one that is not `_teacher`."""
    if not paths or any(not p.strip() for p in paths):
        # An empty value (an unset shell variable, "") must not silently mean "train from scratch".
        raise TextJepaError("--init-encoder is empty; give a model_latent_*.safetensors or model_world_* file")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise TextJepaError(f"--init-encoder: checkpoint not found: {missing[0]} (an unmatched glob?)")
    models = [p for p in paths if not RunFiles.is_teacher(p)]
    if len(models) != 1:
        raise TextJepaError(f"expected one checkpoint (its _teacher file is found beside it), got: {' '.join(paths)}")
    return models[0]


@dataclass
class Checkpoint:
    path: Path
    kind: RunKind
    role: str  # "online" or "teacher"
    config: ModelConfig
    tensors: dict[str, torch.Tensor]
    info: dict  # everything else from the metadata: step, training settings, metrics
    tokenizer: Tokenizer
    data: DataContract  # how its records become model input (info["data"] on disk)
    # A teacher whose encoder is the online checkpoint's (ENCODER_IN_ONLINE): its tensors come from there.
    encoder_in_online: bool = False

    def module_state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    @property
    def files(self) -> RunFiles:
        return RunFiles(self.path)


def save_checkpoint(
    path: Path,
    kind: RunKind,
    role: str,
    config: ModelConfig,
    tensors: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    info: dict,
    data: DataContract | None = None,
) -> None:
    """data: the run's data contract, recorded as info["data"] (None for a checkpoint not trained on data)."""
    write_safetensors(path, *checkpoint_contents(kind, role, config, tensors, tokenizer, info, data))


def checkpoint_contents(
    kind: RunKind,
    role: str,
    config: ModelConfig,
    tensors: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    info: dict,
    data: DataContract | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A checkpoint file's tensors (on the CPU) and metadata (save_checkpoint's arguments). A teacher given no
    tensors is one whose encoder is the online checkpoint's (ENCODER_IN_ONLINE)."""
    info = {k: v for k, v in info.items() if k != "data"}
    if data is not None:
        info["data"] = data.to_info()
    metadata = {
        "format": FORMAT,
        "kind": str(RunKind(kind)),
        "role": role,
        "config": json.dumps(config.to_dict()),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        # Embedded so that loading needs only this file, whatever else is in the directory.
        "tokenizer": tokenizer.to_str(),
        "info": json.dumps(info),
    }
    if role == "teacher" and not tensors:
        metadata["encoder"] = ENCODER_IN_ONLINE
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata


def save_tokenizer_files(files: RunFiles, kind: RunKind, tokenizer: Tokenizer) -> None:
    atomic_write_text(files.tokenizer, tokenizer.to_str())
    write_vocab_txt(tokenizer, files.vocab(kind))


def _read_checkpoint(path: Path, tensors: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    """A checkpoint file's metadata and (if `tensors`) its tensors, or a one-line error saying what is wrong."""
    if path.is_dir():
        raise TextJepaError(folder_given_as_file(path, "a checkpoint"))
    if not path.is_file():
        raise TextJepaError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise TextJepaError(f"{path} is not a textjepa checkpoint (no textjepa metadata)")
            return metadata, {key: handle.get_tensor(key) for key in handle.keys()} if tensors else {}
    except TextJepaError:
        raise
    except Exception as exc:  # safetensors raises its own error types for foreign or damaged files
        raise TextJepaError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc


def _recorded_config(path: Path, metadata: dict) -> ModelConfig:
    try:
        config = ModelConfig.from_dict(json.loads(metadata["config"]))
        config.validate()
    except TextJepaError as exc:
        raise TextJepaError(f"{path}: its recorded model config is invalid ({exc})") from None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise TextJepaError(f"{path}: its metadata is damaged ({type(exc).__name__}: {exc})") from None
    return config


def checkpoint_config(path: str | Path) -> ModelConfig:
    """The model config a checkpoint records, read from its metadata alone (no tensors are loaded): what a command
    needs to choose its defaults before it loads the model."""
    path = Path(path)
    metadata, _ = _read_checkpoint(path, tensors=False)
    return _recorded_config(path, metadata)


def load_checkpoint(path: str | Path, expect_kind: RunKind | None = None) -> Checkpoint:
    path = Path(path)
    metadata, tensors = _read_checkpoint(path, tensors=True)
    try:
        kind = RunKind(metadata["kind"])
    except KeyError:
        raise TextJepaError(f"{path}: its metadata names no kind (damaged or edited file)") from None
    except ValueError:
        raise TextJepaError(f"{path} is a checkpoint of unknown kind {metadata['kind']!r}") from None
    if expect_kind is not None and kind != expect_kind:
        raise TextJepaError(f"{path} is a {kind} checkpoint, expected a {expect_kind} checkpoint")
    try:
        tokenizer = tokenizer_from_string(metadata["tokenizer"])
        recorded_hash = metadata["tokenizer_hash"]
    except Exception as exc:  # the tokenizers library raises plain Exception for text it cannot parse
        raise TextJepaError(f"{path}: its embedded tokenizer is missing or unreadable (damaged file?)") from exc
    if tokenizer_hash(tokenizer) != recorded_hash:
        raise TextJepaError(f"{path}: embedded tokenizer does not match its recorded hash (damaged file?)")
    config = _recorded_config(path, metadata)
    try:
        info = json.loads(metadata["info"])
        role = metadata["role"]
        encoder_in_online = role == "teacher" and metadata.get("encoder") == ENCODER_IN_ONLINE
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise TextJepaError(f"{path}: its metadata is damaged ({type(exc).__name__}: {exc})") from None
    if not (encoder_in_online and not tensors):
        check_tensors_match_config(path, kind, role, config, tensors)
    return Checkpoint(
        path=path,
        kind=kind,
        role=role,
        config=config,
        tensors=tensors,
        info=info,
        tokenizer=tokenizer,
        data=DataContract.from_info(info.pop("data", None), kind, config.max_seq),
        encoder_in_online=encoder_in_online,
    )


def check_tensors_match_config(
    path: Path, kind: RunKind, role: str, config: ModelConfig, tensors: dict[str, torch.Tensor]
) -> None:
    """The tensors are those of the model the recorded config describes (names and shapes), so an edited or
    mismatched config is refused here, on load, instead of failing later inside the model."""
    from textjepa.models.heads import LatentModel, WorldModel

    with torch.device("meta"):  # shapes only, no memory
        model = (LatentModel if kind == RunKind.LATENT else WorldModel)(config)
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    if role == "teacher":
        expected = {name: shape for name, shape in expected.items() if name.startswith("encoder.")}
    for name, shape in expected.items():
        if name not in tensors:
            raise TextJepaError(f"{path}: tensor {name} is missing for its recorded config (damaged or edited file)")
        if tuple(tensors[name].shape) != shape:
            raise TextJepaError(
                f"{path}: its recorded config (dim={config.dim}, layers={config.layers}, heads={config.heads}, "
                f"vocab={config.vocab_size}) does not match its tensors ({name} is {tuple(tensors[name].shape)}, "
                f"expected {shape}); damaged or edited file"
            )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise TextJepaError(
            f"{path}: tensor {unexpected[0]} does not belong to its recorded config (damaged or edited file)"
        )


def load_teacher(checkpoint: Checkpoint) -> Checkpoint:
    """The EMA teacher saved beside an online checkpoint. Every run writes both; a missing or foreign teacher is
    an error, never replaced by the online encoder (whose latents are not the targets the model learned). A frozen
    backbone is its own teacher: its teacher file says so (ENCODER_IN_ONLINE) and the encoder is read from the
    online checkpoint."""
    path = checkpoint.files.teacher
    if not path.is_file():
        raise TextJepaError(
            f"teacher checkpoint {path.name} not found beside {checkpoint.path.name}; training writes both files, "
            "keep them together"
        )
    teacher = load_checkpoint(path, expect_kind=checkpoint.kind)
    same_run = (
        teacher.role == "teacher"
        and teacher.config == checkpoint.config
        and tokenizer_hash(teacher.tokenizer) == tokenizer_hash(checkpoint.tokenizer)
        and teacher.info.get("step") == checkpoint.info.get("step")
        and teacher.info.get("run_id") == checkpoint.info.get("run_id")
    )
    if not same_run:
        raise TextJepaError(
            f"{path.name} is not the teacher of {checkpoint.path.name} (another role, shape, tokenizer, step or run); "
            "a checkpoint and its teacher must come from the same run"
        )
    if teacher.encoder_in_online:
        from textjepa.config import FROZEN

        if checkpoint.info.get("backbone_mode") != FROZEN:  # an EMA teacher is never replaced by the online encoder
            raise TextJepaError(
                f"{path.name} says its encoder is {checkpoint.path.name}'s, but that model was trained with an EMA "
                "teacher (only a frozen backbone is its own teacher); damaged or edited file"
            )
        teacher.tensors = {name: value for name, value in checkpoint.tensors.items() if name.startswith("encoder.")}
    return teacher


def load_with_teacher(path: str | Path, expect_kind: RunKind | None = None) -> tuple[Checkpoint, Checkpoint]:
    """A checkpoint and its EMA teacher: the one way the package loads both."""
    checkpoint = load_checkpoint(path, expect_kind)
    return checkpoint, load_teacher(checkpoint)


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
    atomic_write_bytes(path, STATE_MAGIC + digest + b"\n" + payload)


def load_training_state(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise TextJepaError(folder_given_as_file(path, "a training state") + " (or --resume auto)")
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


def find_latest_state(out_dir: Path, kind: RunKind) -> Path | None:
    """The newest training state of this kind in out_dir whose checksum verifies."""
    candidates = sorted(out_dir.glob(RunFiles.state_pattern(kind)), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        try:
            load_training_state(candidate)
        except TextJepaError:
            continue
        return candidate
    return None
