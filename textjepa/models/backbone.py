"""A pretrained BERT-family encoder (all-MiniLM-L6-v2, a model folder, a hub model) in place of the scratch Encoder.

`PretrainedEncoder` has the scratch encoder's interface (textjepa/models/encoder.py): token ids [B, T] and their
validity mask in, token latents [B, T, dim] (zero at padding) and one pooled latent [B, dim] out. The project's
rows carry no special tokens (the data contract tokenizes without them and cuts rows itself), so the backbone puts
its own [CLS] and [SEP] around each row inside `forward` and returns the latents of the T text positions only: a
JEPA mask over the row lines up with the latents it predicts.

The pooled latent is the one sentence-transformers computes for the same text: the folder's Pooling module says
how (all-MiniLM-L6-v2: the mean over the attention mask, [CLS] and [SEP] included), before any Normalize module.
That mean needs the latents of [CLS] and [SEP], which `forward` leaves out; `pooling_latents` returns the text
latents with the two ends appended ([B, T + 2, dim]), and `pool` reads those. `pooled` does both in one pass.

A `BackboneSpec` is everything needed to build the module again without the folder it came from (the HF config,
the special token ids, the pooling, the identity of the source: its name and a hash of its weights and tokenizer):
a checkpoint records `spec.to_record()`, keeps the weights in its own tensors and the tokenizer as its tokenizer,
and `encoder_from_record` rebuilds the module from those with no network and no package beyond transformers.

Dropout is switched off: like the scratch encoder the module computes the same in train and eval mode (training
deep-copies the encoder into an EMA teacher that it never puts in eval mode).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer
from torch import nn

from textjepa.data.hub_models import model_folder
from textjepa.errors import TextJepaError
from textjepa.models.config import SCRATCH, ModelConfig

if TYPE_CHECKING:
    from textjepa.models.encoder import Encoder
# Model types whose inputs are [CLS] text [SEP] with absolute positions from 0 (BertModel and its checkpoints).
BERT_FAMILY = ("bert",)
POOLING_MODES = ("mean", "cls")
# sentence-transformers' Pooling config before 6.0 (all-MiniLM-L6-v2's): one switch per mode.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
SPEC_FORMAT = 1
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


@dataclass(frozen=True)
class BackboneSpec:
    """What a pretrained backbone is, enough to rebuild it offline; a checkpoint stores `to_record()`."""

    source: str  # as named on the command line: minilm, a folder, hub:<org>/<name>
    hf_config: dict  # the transformers config (dropout off), from which the module is built
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    pooling: str  # "mean" (over [CLS], the text and [SEP]) or "cls"
    normalize: bool  # whether sentence-transformers normalises the pooled latent after pooling (recorded only)
    max_seq: int  # text tokens a row may have: the model's positions less [CLS] and [SEP]
    tokenizer_hash: str  # textjepa.data.tokens.tokenizer_hash of the backbone's tokenizer as textjepa uses it
    weights_sha256: str  # of the source's weight file: which pretrained model training started from

    @property
    def dim(self) -> int:
        return int(self.hf_config["hidden_size"])

    @property
    def layers(self) -> int:
        return int(self.hf_config["num_hidden_layers"])

    @property
    def heads(self) -> int:
        return int(self.hf_config["num_attention_heads"])

    @property
    def vocab_size(self) -> int:
        return int(self.hf_config["vocab_size"])

    def to_record(self) -> dict:
        return {"format": SPEC_FORMAT, **asdict(self)}

    @classmethod
    def from_record(cls, record: dict) -> BackboneSpec:
        if not isinstance(record, dict) or record.get("format") != SPEC_FORMAT:
            raise TextJepaError(f"the recorded backbone is not one this version reads (format {SPEC_FORMAT})")
        try:
            return cls(**{name: record[name] for name in cls.__dataclass_fields__})
        except KeyError as exc:
            raise TextJepaError(f"the recorded backbone lacks {exc.args[0]!r} (damaged or edited file)") from None


class PretrainedEncoder(nn.Module):
    """A Hugging Face BERT-family model with the scratch Encoder's interface (see the module doc)."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        self.spec = spec
        self.config = spec  # the shape the rest of the system reads: dim, max_seq, layers, heads, vocab_size
        hf_config = AutoConfig.for_model(**spec.hf_config)
        # Random weights until a state dict is loaded (from the source folder or a checkpoint's own tensors).
        # No pooler: sentence-transformers pools the token latents, BertModel's pooler is never used.
        self.model = AutoModel.from_config(hf_config, add_pooling_layer=False, attn_implementation="sdpa")

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def max_seq(self) -> int:
        return self.spec.max_seq

    @property
    def mask_id(self) -> int:
        """The id span masking puts at masked positions ([MASK]; textjepa's own encoder uses config.MASK_ID)."""
        return self.spec.mask_id

    @property
    def pad_id(self) -> int:
        return self.spec.pad_id

    def _hidden(self, ids: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's last hidden states of [CLS] row [SEP]: (text latents [B, T, D], ends [B, 2, D])."""
        batch, width = ids.shape
        lengths = valid.sum(1)
        positions = torch.arange(width + 2, device=ids.device)
        if not torch.equal(valid, positions[None, :width] < lengths[:, None]):
            raise ValueError("rows must be right-padded: valid is True on a prefix of each row (data contract)")
        inputs = torch.full((batch, width + 2), self.spec.pad_id, dtype=torch.long, device=ids.device)
        inputs[:, 0] = self.spec.cls_id
        inputs[:, 1 : width + 1] = torch.where(valid, ids, self.spec.pad_id)
        rows = torch.arange(batch, device=ids.device)
        inputs[rows, lengths + 1] = self.spec.sep_id
        attention = (positions[None, :] < (lengths + 2)[:, None]).long()
        hidden = self.model(
            input_ids=inputs, attention_mask=attention, token_type_ids=torch.zeros_like(inputs)
        ).last_hidden_state
        text = hidden[:, 1 : width + 1] * valid.unsqueeze(-1).to(hidden.dtype)
        ends = torch.stack([hidden[:, 0], hidden[rows, lengths + 1]], dim=1)
        return text, ends

    def forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids, valid: [B, T] (rows without special tokens, right-padded) -> text latents [B, T, dim], zero at
        padding."""
        return self._hidden(ids, valid)[0]

    def pooling_latents(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """What `pool` reads: the text latents with the latents of [CLS] and [SEP] appended, [B, T + 2, dim]."""
        text, ends = self._hidden(ids, valid)
        return torch.cat([text, ends], dim=1)

    def pool(self, latents: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """`pooling_latents(ids, valid)` [B, T + 2, D] -> sentence-transformers' pooled latent [B, D] (before any
        normalisation)."""
        width = ids.shape[1]
        if latents.shape[1] != width + 2:
            raise ValueError("pool reads pooling_latents(ids, valid) (the text and [CLS], [SEP]), not forward's")
        text, ends = latents[:, :width], latents[:, width:]
        if self.spec.pooling == "cls":
            return ends[:, 0]
        count = valid.sum(1, keepdim=True).to(latents.dtype) + 2  # [CLS] and [SEP] are under the attention mask
        return (text.sum(1) + ends.sum(1)) / count

    def pooled(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids, valid: [B, T] -> one latent per row [B, dim]: sentence-transformers' embedding of the same text."""
        return self.pool(self.pooling_latents(ids, valid), ids, valid)


# ---------------------------------------------------------------- loading a backbone from its files


def backbone_tokenizer(folder: Path, name: str) -> Tokenizer:
    """The backbone's tokenizer as the data contract uses it: no truncation, no padding (rows are cut and padded
    by textjepa), lower-cased first when sentence-transformers would lower-case the text."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TextJepaError(f"backbone {name}: {folder} has no tokenizer.json (a fast tokenizer file is needed)")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exception for a file it cannot parse
        raise TextJepaError(f"backbone {name}: {path} is not a readable tokenizer ({exc})") from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if _read_json(folder / "sentence_bert_config.json", name).get("do_lower_case"):
        from tokenizers import normalizers

        steps = [normalizers.Lowercase()] + ([tokenizer.normalizer] if tokenizer.normalizer is not None else [])
        tokenizer.normalizer = normalizers.Sequence(steps)
    return tokenizer


def load_backbone(name: str, data_dir: str | Path = "data") -> tuple[PretrainedEncoder, Tokenizer]:
    """The backbone NAME (minilm, a model folder, hub:<org>/<name>) with its pretrained weights, in fp32 on the
    CPU, and its tokenizer. A missing folder, a model that is not BERT-family, a missing tokenizer.json or a hub
    model that cannot be fetched is a one-line TextJepaError."""
    folder = model_folder(name, data_dir)
    config = _read_json(folder / "config.json", name)
    if not config:
        raise TextJepaError(f"backbone {name}: {folder} has no config.json (not a Hugging Face model folder)")
    model_type = config.get("model_type")
    if model_type not in BERT_FAMILY:
        raise TextJepaError(
            f"backbone {name} is a {model_type or 'unknown'} model; supported: {', '.join(BERT_FAMILY)} family"
        )
    weights = _weights_file(folder, name)
    tokenizer = backbone_tokenizer(folder, name)
    spec = _spec(name, folder, config, tokenizer, weights)
    encoder = PretrainedEncoder(spec)
    _load_weights(encoder, weights, name)
    return encoder.eval(), tokenizer


def _spec(name: str, folder: Path, config: dict, tokenizer: Tokenizer, weights: Path) -> BackboneSpec:
    from textjepa.data.tokens import tokenizer_hash

    special = tokenizer.encode("", add_special_tokens=True).ids
    mask_id = tokenizer.token_to_id("[MASK]")
    if len(special) != 2 or mask_id is None:
        raise TextJepaError(
            f"backbone {name}: its tokenizer does not frame a text as [CLS] text [SEP] with a [MASK] token "
            "(not a BERT-family tokenizer)"
        )
    pad_id = tokenizer.token_to_id("[PAD]")
    pad_id = int(config.get("pad_token_id") or 0) if pad_id is None else pad_id
    hf_config = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures",)}
    hf_config.update(dict.fromkeys(DROPOUT_KEYS, 0.0))
    return BackboneSpec(
        source=name,
        hf_config=hf_config,
        cls_id=special[0],
        sep_id=special[1],
        mask_id=mask_id,
        pad_id=pad_id,
        pooling=_pooling_mode(folder, name),
        normalize=_has_normalize(folder, name),
        max_seq=_max_text_tokens(folder, name, config),
        tokenizer_hash=tokenizer_hash(tokenizer),
        weights_sha256=file_sha256(weights),
    )


def _modules(folder: Path, name: str) -> list[dict]:
    """sentence-transformers' modules.json ([] for a plain Hugging Face folder)."""
    modules = _read_json(folder / "modules.json", name, default=[])
    if not isinstance(modules, list):
        raise TextJepaError(f"backbone {name}: {folder / 'modules.json'} is not a list of modules")
    return modules


def _pooling_mode(folder: Path, name: str) -> str:
    """Mean pooling for a plain Hugging Face folder (what sentence-transformers builds for one); else what the
    folder's Pooling module's config says: `pooling_mode` (sentence-transformers 6), or the older
    `pooling_mode_*_tokens` switches (all-MiniLM-L6-v2's), none of them set meaning the mean, as there."""
    pooling = [m for m in _modules(folder, name) if str(m.get("type", "")).endswith(".Pooling")]
    if not pooling:
        return "mean"
    settings = _read_json(folder / pooling[0].get("path", "") / "config.json", name)
    modes = settings.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in LEGACY_POOLING_KEYS.items() if settings.get(key)] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise TextJepaError(
            f"backbone {name}: pooling {'+'.join(map(str, modes))} is not supported "
            f"(one of: {', '.join(POOLING_MODES)})"
        )
    return modes[0]


def _max_text_tokens(folder: Path, name: str, config: dict) -> int:
    """The text tokens sentence-transformers keeps of a row (its max_seq_length, or the tokenizer's
    model_max_length, within the model's positions), less [CLS] and [SEP]."""
    positions = int(config.get("max_position_embeddings", 512))
    limit = _read_json(folder / "sentence_bert_config.json", name).get("max_seq_length")
    if limit is None:
        limit = _read_json(folder / "tokenizer_config.json", name).get("model_max_length")
    limit = positions if not isinstance(limit, int) else min(limit, positions)
    return limit - 2


def _has_normalize(folder: Path, name: str) -> bool:
    return any(str(m.get("type", "")).endswith(".Normalize") for m in _modules(folder, name))


def _weights_file(folder: Path, name: str) -> Path:
    path = folder / "model.safetensors"
    if not path.is_file():
        raise TextJepaError(f"backbone {name}: {folder} has no model.safetensors (safetensors weights are needed)")
    return path


def _load_weights(encoder: PretrainedEncoder, weights: Path, name: str) -> None:
    """A BertModel's tensors, saved bare (sentence-transformers) or under `bert.` (a task model's checkpoint)."""
    from safetensors.torch import load_file

    tensors = load_file(str(weights))
    prefix = "bert."
    if any(key.startswith(prefix) for key in tensors):
        tensors = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
    expected = encoder.model.state_dict()
    missing = [key for key in expected if key not in tensors]
    if missing:
        raise TextJepaError(f"backbone {name}: {weights} lacks {missing[0]} (not weights of this model's config)")
    wrong = [key for key in expected if tuple(tensors[key].shape) != tuple(expected[key].shape)]
    if wrong:
        raise TextJepaError(f"backbone {name}: {weights} has {wrong[0]} of another shape than its config says")
    encoder.model.load_state_dict({key: tensors[key].float() for key in expected})


def _read_json(path: Path, name: str, default: Any = None) -> Any:
    if not path.is_file():
        return {} if default is None else default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TextJepaError(f"backbone {name}: {path} is not readable JSON ({exc})") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- checkpoints


def backbone_record(encoder: PretrainedEncoder) -> dict:
    """The backbone's identity for a checkpoint's metadata (its weights are the checkpoint's tensors, its
    tokenizer the checkpoint's tokenizer)."""
    return encoder.spec.to_record()


def encoder_from_record(
    record: dict, tokenizer: Tokenizer, state: dict[str, torch.Tensor] | None = None
) -> PretrainedEncoder:
    """The module a checkpoint describes, rebuilt from its record, its tokenizer and (optionally) its encoder's
    state dict: no network, no model folder."""
    from textjepa.data.tokens import tokenizer_hash

    spec = BackboneSpec.from_record(record)
    if tokenizer_hash(tokenizer) != spec.tokenizer_hash:
        raise TextJepaError(
            f"the tokenizer beside backbone {spec.source} is not the one it was trained with (hash differs)"
        )
    encoder = PretrainedEncoder(spec)
    if state is not None:
        encoder.load_state_dict(state)
    return encoder.eval()


def build_encoder(config: ModelConfig) -> Encoder | PretrainedEncoder:
    """The encoder a model config describes: the scratch Encoder, or the pretrained backbone its record describes
    (random weights until a state dict is loaded). Reads `config.backbone` ("scratch" or the backbone's name) and
    `config.backbone_record` (BackboneSpec.to_record()); a config without them is a scratch one."""
    if getattr(config, "backbone", SCRATCH) == SCRATCH:
        from textjepa.models.encoder import Encoder

        return Encoder(config)
    return PretrainedEncoder(BackboneSpec.from_record(config.backbone_record))


# The shape options a backbone decides (its own), by their user-facing names.
BACKBONE_SHAPE = {"dim": "dim", "layers": "layers", "heads": "heads", "max_vocab": "vocab_size"}


def config_for_backbone(config: ModelConfig, encoder: PretrainedEncoder, given: dict | None = None) -> ModelConfig:
    """`config` shaped as the backbone is: its width, depth, heads and vocabulary, max_seq capped at what fits
    between [CLS] and [SEP], mean pooling (the backbone pools as its record says, never lexically), and its record.
    `given`: the shape options the user gave (by user-facing name); one that disagrees with the backbone is a
    one-line error, never a silent reshape."""
    import dataclasses

    spec = encoder.spec
    own = {"dim": spec.dim, "layers": spec.layers, "heads": spec.heads, "vocab_size": spec.vocab_size}
    for option, name in BACKBONE_SHAPE.items():
        value = (given or {}).get(option)
        if value is not None and value != own[name]:
            raise TextJepaError(
                f"--{option.replace('_', '-')} {value} disagrees with backbone {spec.source} ({own[name]}); "
                "omit it, the backbone sets the shape"
            )
    if (given or {}).get("max_seq") is not None and given["max_seq"] > spec.max_seq:
        raise TextJepaError(f"--max-seq {given['max_seq']} is more than backbone {spec.source} reads ({spec.max_seq})")
    if (given or {}).get("pooling") not in (None, "mean"):
        raise TextJepaError(f"backbone {spec.source} pools as it was trained ({spec.pooling}); omit --pooling")
    return dataclasses.replace(
        config,
        **own,
        max_seq=min(config.max_seq, spec.max_seq),
        pooling="mean",
        backbone=spec.source,
        backbone_record=spec.to_record(),
    )
