"""The model card: a README beside a run's checkpoint (`model_<kind>_<size>.README.md`), in the Hugging Face
convention (YAML front matter, then Markdown), saying what the checkpoint is and how to use it.

It is written from exactly what the checkpoint records (its config, info and data contract) each time the best
checkpoint is written, atomically, and carries the run's id like the checkpoint, its teacher and its state, so a
card of another run is told apart. One card per run: a latent and a world run may share an out-dir.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from textjepa.data.contract import DataContract
from textjepa.io import RunFiles, RunKind, atomic_write_text
from textjepa.models.config import ModelConfig

if TYPE_CHECKING:
    from textjepa.eval.world import WorldEvaluation

WHAT_IT_IS = {
    RunKind.LATENT: (
        "a JEPA-pretrained text encoder: a transformer whose pooled latents embed text, trained by predicting "
        "the EMA teacher's latents of masked spans from their context"
    ),
    RunKind.WORLD: (
        "a next-turn world model of conversation: the encoder pools a context into a state latent, the "
        "transition predicts the latent of the next turn under the action `reply`, and the conditioning head "
        "projects that prediction to the vector a decoder is conditioned on"
    ),
}


def card_path(model_file: Path) -> Path:
    """The card of the run whose checkpoint is `model_file`."""
    return RunFiles(model_file).card


def write_model_card(
    model_file: Path,
    kind: RunKind,
    config: ModelConfig,
    info: dict,
    data: DataContract,
    parameters: int,
    evaluation: WorldEvaluation | None = None,
) -> Path:
    """Writes (atomically) and returns the card of the checkpoint just saved at `model_file`; evaluation: the
    world model's eval-world table that train-world computes at its end."""
    kind = RunKind(kind)
    files = RunFiles(model_file)
    name = files.model.name
    train = info.get("train", {})
    val = info.get("val") or {}
    front = [
        "---",
        "library_name: textjepa",
        f"tags: [textjepa, jepa, {kind}]",
        f"textjepa_kind: {kind}",
        f"textjepa_run_id: {info.get('run_id', '')}",
        f"textjepa_checkpoint: {name}",
        f"textjepa_step: {info.get('step', '')}",
        "---",
    ]
    lines = [
        *front,
        "",
        f"# {files.stem}",
        "",
        f"`{name}` is {WHAT_IT_IS[kind]}. It was trained by textjepa (`textjepa {command(kind)}`); its EMA "
        f"teacher is `{files.teacher.name}` beside it (loading needs both).",
        "",
        "## Backbone and shape",
        "",
        f"- backbone: {describe_backbone(config)}",
        f"- parameters: {parameters:,} (online model)",
        "",
        *table(["setting", "value"], [(field, value) for field, value in dataclasses.asdict(config).items()]),
        "",
        "## Data contract",
        "",
        "How a record becomes model input; serving and evaluation apply the same rule.",
        "",
        *table(["", ""], data_rows(data)),
        "",
        "## Training settings",
        "",
        *table(["setting", "value"], training_rows(train, info)),
        "",
        f"Precision: {info.get('precision', 'fp32')} ({info.get('precision_reason', 'as requested')}); the weights "
        f"are {info.get('weights_dtype', 'float32')}.",
        "",
        "## Validation of the kept step",
        "",
        f"Step {info.get('step', '?')} of {train.get('steps', '?')}, on the held-out split"
        + (" (the best score of the run's validations):" if val else ": (no validation was run)"),
        "",
        *(table(["metric", "value"], [(key, f"{value:.4f}") for key, value in val.items()]) if val else []),
        "",
        *(evaluation_section(name, evaluation) if evaluation is not None else []),
        "## How to load it",
        "",
        *how_to_load(kind, name, config),
    ]
    path = card_path(model_file)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def evaluation_section(name: str, evaluation: WorldEvaluation) -> list[str]:
    """eval-world's table as train-world computed it after its last step, with what its numbers are."""
    from textjepa.eval.world import WORLD_COLUMNS

    # A row without a metric (the lexical baseline has no latent cosine) shows "-", as eval-world prints it.
    rows = [
        [row, *(f"{metrics[column]:.4f}" if column in metrics else "-" for column in WORLD_COLUMNS)]
        for row, metrics in evaluation.rows.items()
    ]
    command = f"textjepa eval-world {name} --split {evaluation.split} --batch {evaluation.batch} --precision "
    baselines = [
        f"{evaluation.copy_row} predicts the context's own latent",
        "the mean baseline predicts the training next turns' mean latent for every context",
    ]
    if "tf-idf baseline" in evaluation.rows:
        baselines.append("the tf-idf baseline ranks the same candidates by word overlap")
    if evaluation.zero_shot_row in evaluation.rows:
        baselines.append(f"{evaluation.zero_shot_row} ranks them by the pretrained backbone's own latents")
    return [
        "## Evaluation at the end of training",
        "",
        f"eval-world's table for this checkpoint, computed by train-world after its last step: the "
        f"{evaluation.split} split of the training file (held out from training), {evaluation.pairs} pairs in "
        f"batches of {evaluation.batch}, each pair's true next turn ranked among its batch's next turns; "
        f"{evaluation.precision} compute.",
        "",
        *(f"| {' | '.join(cells)} |" for cells in [["", *WORLD_COLUMNS], ["---"] * (len(WORLD_COLUMNS) + 1), *rows]),
        "",
        f"Baselines: {'; '.join(baselines)} ({'; '.join(evaluation.notes)}). The same table again: "
        f"`{command}{evaluation.precision} --steps {-(-evaluation.pairs // evaluation.batch)}`.",
        "",
    ]


def training_rows(train: dict, info: dict) -> list[tuple[str, object]]:
    """The loop's settings (not where the files went), then the stage's own: its start and its loss."""
    rows = [(key, value) for key, value in train.items() if key != "out_dir"]
    stage = [(key, info[key]) for key in ("init_encoder", "masking", "loss") if info.get(key) is not None]
    return rows + stage


def command(kind: RunKind) -> str:
    return {RunKind.LATENT: "latent", RunKind.WORLD: "train-world"}[kind]


def describe_backbone(config: ModelConfig) -> str:
    """The encoder's backbone: the checkpoint's pretrained one where it names one, else textjepa's own."""
    if not config.is_scratch:
        return f"pretrained `{config.backbone}` ({config.layers} layers, width {config.dim}, its own tokenizer)"
    return (
        f"textjepa's transformer encoder trained from scratch ({config.layers} layers, width {config.dim}, "
        f"{config.heads} heads, {config.max_seq} tokens, a byte-level BPE tokenizer of {config.vocab_size} tokens)"
    )


def data_rows(data: DataContract) -> list[tuple[str, object]]:
    source = Path(data.source) if data.source else None
    size = f"{source.stat().st_size:,} bytes" if source is not None and source.is_file() else "unknown"
    return [
        ("training file", data.source or "none"),
        ("file size", size),
        ("corpus hash", data.corpus_hash or "none"),
        ("splits", f"{data.val_fraction:g} of the records held out for validation (seeded hash, seed {data.seed})"),
        ("max_seq", f"{data.max_seq} tokens (a context keeps its last, a reply its first)"),
        ("min_tokens", data.min_tokens),
        ("max_line_bytes", data.max_line_bytes),
    ]


def how_to_load(kind: RunKind, name: str, config: ModelConfig) -> list[str]:
    if kind == RunKind.WORLD:
        cli = [
            f'textjepa infer {name} "hello"            # one reply through the retrieval decoder',
            f"textjepa serve {name}                     # the OpenAI-compatible server and its chat page",
            f"textjepa eval-world {name}                # next-turn retrieval beside its baselines",
        ]
        python = [
            "from textjepa import WorldModel",
            "",
            f'model = WorldModel.load("{name}")',
            'latents = model.encode(["User: hello"])      # the context (state) latents',
            'print(model.reply("hello"))                  # the user\'s message -> a reply',
        ]
    else:
        cli = [
            f"textjepa embed {name} texts.txt --out vectors.parquet",
            f"textjepa eval-jepa {name}",
        ]
        python = [
            "from textjepa import Encoder",
            "",
            f'encoder = Encoder.load("{name}")',
            'vectors = encoder.encode(["some text"])',
        ]
    loaded = (
        "`SentenceTransformer(DIR, trust_remote_code=True).encode(texts)` gives the same vectors (textjepa installed)."
        if config.is_scratch
        else "`SentenceTransformer(DIR).encode(texts)` gives the same vectors (a plain Transformer + Pooling model)."
    )
    export = [
        "",
        f"sentence-transformers: `textjepa export {name} --format sentence-transformers --out DIR`, then",
        loaded,
    ]
    return ["Command line:", "", "```bash", *cli, "```", "", "Python:", "", "```python", *python, "```", *export]


def table(header: list[str], rows: list[tuple[str, object]]) -> list[str]:
    def cell(value: object) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        return text.replace("|", "\\|").replace("\n", " ")

    return [
        f"| {' | '.join(header)} |",
        f"|{'---|' * len(header)}",
        *(f"| {cell(key)} | {cell(value)} |" for key, value in rows),
    ]
