"""Configuration: one dataclass per command, every default in this file.

The CLI only maps arguments onto these; the library takes them as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from textjepa.errors import TextJepaError
from textjepa.objectives.jepa_loss import JepaLossConfig
from textjepa.objectives.world_loss import WorldLossConfig

SPECIAL_TOKENS = ("<pad>", "<unk>", "<mask>")
PAD_ID, UNK_ID, MASK_ID = 0, 1, 2
# Byte-level BPE needs all 256 byte symbols so that no Unicode text is ever out of vocabulary.
MIN_VOCAB = len(SPECIAL_TOKENS) + 256
DEFAULT_ACTION = "reply"


@dataclass
class ModelConfig:
    """Shape of the encoder and its heads; stored in every checkpoint's metadata."""

    vocab_size: int = 8000
    dim: int = 368
    layers: int = 4
    heads: int = 8
    max_seq: int = 128
    mlp_ratio: int = 4
    predictor_hidden: int = 0  # 0 means dim // 2 (a bottleneck)
    bridge_dim: int = 256
    actions: list[str] = field(default_factory=lambda: [DEFAULT_ACTION])

    def validate(self) -> None:
        for name in ("dim", "layers", "heads", "max_seq", "bridge_dim"):
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
    def predictor_width(self) -> int:
        return self.predictor_hidden or max(1, self.dim // 2)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class DataConfig:
    """How a line file becomes training records."""

    path: str = ""
    data_dir: str = "data"  # hub caches and token caches live here
    max_line_bytes: int = 1_000_000
    min_tokens: int = 2
    val_fraction: float = 0.05
    tokenizer_sample_lines: int = 200_000  # tokenizer training reads at most this many lines


@dataclass
class TrainConfig:
    """What every training stage shares: optimisation, schedules, output."""

    steps: int = 1000
    batch: int = 32  # per process: the global batch is batch x world size
    global_batch: int = 0  # if set, the global batch; each of N processes takes global_batch / N
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.3  # the last 30% of steps decay with a cosine
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_start: float = 0.996
    ema_end: float = 0.9999
    eval_every: int = 100
    eval_batches: int = 8
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs"
    resume: str | None = None  # a state file, or "auto" for the newest valid one in out_dir
    bucket_by_length: bool = True
    progress: bool = True

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
    max_spans: int = 4
    max_span_len: int = 8
    max_masked_ratio: float = 0.4

    def validate(self) -> None:
        if self.max_spans < 1 or self.max_span_len < 1:
            raise TextJepaError("max_spans and max_span_len must be at least 1")
        if not 0 < self.max_masked_ratio < 1:
            raise TextJepaError(f"max_masked_ratio must be in (0, 1), got {self.max_masked_ratio}")


@dataclass
class LatentConfig:
    """`textjepa latent`: JEPA pretraining of the encoder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    loss: JepaLossConfig = field(default_factory=JepaLossConfig)


@dataclass
class WorldConfig:
    """`textjepa train-world`: the next-turn transition and the conditioning head."""

    data: DataConfig = field(default_factory=lambda: DataConfig(min_tokens=1))
    model: ModelConfig = field(default_factory=ModelConfig)
    # A faster teacher than for JEPA: 0.996 -> 0.9999 barely moves in a few hundred steps.
    train: TrainConfig = field(default_factory=lambda: TrainConfig(ema_start=0.99, ema_end=0.999, lr=3e-4))
    init_encoder: str | None = None
    freeze_encoder_steps: int = 0
    # A pretrained encoder is fine-tuned more gently than the freshly initialised transition.
    encoder_lr_scale: float = 1.0
    loss: WorldLossConfig = field(default_factory=WorldLossConfig)


@dataclass
class EvalConfig:
    """`textjepa eval-jepa` and `textjepa eval-world`."""

    model: str = ""
    data: str | None = None  # None: the data the model was trained on
    vocab: str | None = None  # the seed form's <vocab|tokenizer>; checked against the model's tokenizer
    steps: int = 20
    batch: int = 64
    split: str = "auto"  # val, all, or auto (val when the data is the training data)
    seed: int = 0
    device: str = "auto"
    json_path: str | None = None
    data_dir: str = "data"
    shape_overrides: dict = field(default_factory=dict)  # shape args given on the command line


@dataclass
class InferConfig:
    """`textjepa infer`: prompt -> world model -> decoder -> text."""

    model: str = ""
    prompt: str = ""
    vocab: str | None = None
    decoder: str = "retrieval"
    bridge: str | None = None
    decoder_model: str | None = None
    ablate_conditioning: bool = False
    max_new_tokens: int = 128
    top_k: int = 1
    temperature: float = 0.7
    device: str = "auto"
    json: bool = False
    shape_overrides: dict = field(default_factory=dict)


@dataclass
class DecoderSettings:
    """LLM decoders (transformers, llamacpp): the original's JEPA_DECODER_* environment, with its defaults."""

    ctx: int = 4096  # JEPA_DECODER_CTX: tokens of context (capped by the model's own)
    ngl: int = 99  # JEPA_DECODER_NGL: layers offloaded to the GPU (llama.cpp)
    temperature: float = 0.7  # JEPA_DECODER_TEMP; 0 means greedy
    repeat_penalty: float = 1.12  # JEPA_DECODER_REPEAT_PENALTY
    cond_format: str = "chunks"  # JEPA_DECODER_COND_FORMAT: text form of the conditioning without a bridge
    repeat_last_n: int = 64
    top_k: int = 40
    top_p: float = 0.95
    seed: int = 0


@dataclass
class BridgeTrainConfig:
    """`textjepa train-bridge`: the prefix projector for a frozen LLM and a frozen world model."""

    world_model: str = ""
    data: str = ""
    decoder_model: str | None = None
    prefix_tokens: int = 4
    steps: int = 800
    batch: int = 8
    # FACTS: on a raw prefix AdamW at 1e-4 with gradient clipping 1.0 learns and 1e-3 blows it up. Our prefix
    # is embed_scale (SmolLM2: 0.136) x projector output, so 2e-3 here moves it like ~2.7e-4 would; measured on
    # the demo pairs, 2e-3 beat 1e-3 (slow to use the latent) and 4e-3 (lower NLL, smaller matched/shuffled gap).
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_fraction: float = 0.05
    # Stage 1 (no LM forward): align the prefix with the LM's token embeddings (bridge/align.py).
    align_steps: int = 1000
    align_batch: int = 64
    align_lr: float = 1e-3
    max_reply_tokens: int = 48
    max_prompt_tokens: int = 256
    val_pairs: int = 48  # bridge validation pairs, held out of the world model's *training* split
    eval_every: int = 100
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs"
    out: str | None = None  # the bridge file; default <out_dir>/bridge_<lm>_<world>.safetensors
    oracle: bool = False  # diagnostic: condition on the teacher latent of the true reply (a perfect prediction)
    # With the prompt in view the LM can answer from the prompt alone, so the LM loss teaches the prefix a
    # generic style and never to carry the latent's content. For this fraction of training rows the prompt
    # is replaced by an empty user turn: the reply must then come from the prefix (xRAG's
    # "paraphrase" stage), so the prefix learns to say what the latent says.
    prompt_dropout: float = 1.0
    # Fraction of training rows conditioned on the teacher latent of the true reply instead of the prediction:
    # a clean "decode this latent" signal in the same space the world model predicts into.
    target_mix: float = 0.0
    data_dir: str = "data"
    progress: bool = True


@dataclass
class ConditioningEvalConfig:
    """`textjepa eval-conditioning`: reply NLL under matched, shuffled, zero and no conditioning."""

    world_model: str = ""
    bridge: str = ""
    data: str | None = None  # None: the world model's training data (its held-out split is used)
    decoder_model: str | None = None
    max_pairs: int = 256
    batch: int = 8
    max_reply_tokens: int = 48
    max_prompt_tokens: int = 256
    seed: int = 0
    device: str = "auto"
    json_path: str | None = None
    data_dir: str = "data"
    oracle: bool = False  # diagnostic: condition on the teacher latent of the true reply (a perfect prediction)
    progress: bool = True


@dataclass
class DemoConfig:
    """`textjepa demo`: the embedded default, sized to finish in minutes on 2 CPU cores."""

    out_dir: str = "runs/demo"
    dim: int = 128
    layers: int = 2
    heads: int = 4
    max_seq: int = 64
    max_vocab: int = 4000
    latent_steps: int = 600
    world_steps: int = 1000
    batch: int = 32
    world_batch: int = 64
    eval_every: int = 200
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    prompts: tuple[str, ...] = (
        "What does `json.dumps(obj)` do?",
        "What does `shutil.copyfile(src, dst)` do?",
    )


def _check_positive(name: str, value: int | None, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise TextJepaError(f"{name} must be a positive whole number, got {value}")


@dataclass
class PrepareUltrachatConfig:
    """`textjepa prepare ultrachat`: chat turns -> context<TAB>next_turn (HuggingFaceH4/ultrachat_200k)."""

    output: str = "data/ultrachat_pairs.txt"
    context_window: int = 6  # previous turns kept as the context of each assistant turn
    min_tokens: int = 2  # whitespace words, both sides
    max_rows: int | None = None  # dataset rows (conversations) read; None: all
    split: str = "train_sft"
    progress: bool = True

    def validate(self) -> None:
        _check_positive("--context-window", self.context_window, allow_none=False)
        _check_positive("--max-rows", self.max_rows)
        if self.min_tokens < 0:
            raise TextJepaError(f"--min-tokens must not be negative, got {self.min_tokens}")


@dataclass
class PrepareExpertConfig:
    """`textjepa prepare expert`: a Q&A dataset -> `User: question[\\nContext: ...]<TAB>answer`."""

    dataset: str = "sciq"
    output: str | None = None  # None: data/<dataset>_pairs.txt
    split: str | None = None  # None: the dataset's training split
    max_rows: int | None = None  # dataset rows read; None: all
    no_support: bool = False  # leave out the supporting paragraph (SciQ support, SQuAD context)
    min_answer_words: int = 1
    progress: bool = True

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

    input_dir: str = ""
    output: str = "data/expert_pairs.txt"
    min_tokens: int = 1  # bounds on the response, in whitespace words
    max_tokens: int = 200
    max_line_bytes: int = 16_000_000
    progress: bool = True

    def validate(self) -> None:
        if self.min_tokens < 0:
            raise TextJepaError(f"--min-tokens must not be negative, got {self.min_tokens}")
        if self.max_tokens < max(1, self.min_tokens):
            raise TextJepaError(f"--max-tokens ({self.max_tokens}) must be at least --min-tokens and 1")


@dataclass
class PrepareMixConfig:
    """`textjepa prepare mix`: concatenate line files, optionally shuffled (deterministic for a seed)."""

    output: str = ""
    inputs: list[str] = field(default_factory=list)
    shuffle: bool = False
    seed: int = 0
    bucket_bytes: int = 64 << 20  # shuffle: input bytes per temporary bucket (each is shuffled in memory)
    max_line_bytes: int = 1_000_000
    progress: bool = True

    def validate(self) -> None:
        if not self.inputs:
            raise TextJepaError("prepare mix needs at least one input file")
        _check_positive("bucket_bytes", self.bucket_bytes, allow_none=False)


@dataclass
class ServeConfig:
    """`textjepa serve`: the OpenAI-compatible HTTP API over one loaded world model."""

    model: str = ""
    vocab: str | None = None
    host: str = "127.0.0.1"  # loopback by default: exposing the API is an explicit choice (--bind 0.0.0.0:PORT)
    port: int = 8080  # 0 picks a free port (printed at start)
    decoder: str = "retrieval"
    bridge: str | None = None
    decoder_model: str | None = None
    device: str = "auto"
    api_key: str | None = None  # also read from TEXTJEPA_API_KEY
    model_id: str = "textjepa"
    max_concurrency: int = 8  # generations and embedding requests in flight at once
    max_queue: int = 256  # requests allowed to wait for a slot; beyond this, 429 at once
    queue_timeout: float = 30.0  # seconds a request waits for a slot before 429
    max_batch: int = 64  # texts per encoder batch on the model thread
    max_body_bytes: int = 4 * 1024 * 1024
    default_max_tokens: int = 128
    max_tokens_limit: int = 4096
    max_embedding_inputs: int = 2048
    debug: bool = False
    shape_overrides: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise TextJepaError(f"port must be in 0..65535, got {self.port}")
        if not self.host:
            raise TextJepaError("the host to bind to is empty")
        for name in ("max_concurrency", "max_batch", "max_body_bytes", "max_tokens_limit", "max_embedding_inputs"):
            if getattr(self, name) < 1:
                raise TextJepaError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
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
