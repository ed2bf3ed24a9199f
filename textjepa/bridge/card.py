"""The bridge's card: a README beside the bridge file train-bridge keeps (`bridge_<lm>_<world>.README.md`), in
the convention of the model cards (train/model_card.py): what the file is, the world model and the LLM it belongs
to, the projector's shape, the run's settings, the kept step's validation, how to use it.

Written from exactly what the bridge file records, each time the kept step's file is written, atomically, with the
run's id (also in the file's info), so a card of another run is told apart.
"""

from __future__ import annotations

import math
from pathlib import Path

from textjepa.decoders.prefix_bridge import Bridge
from textjepa.io import RunFiles, atomic_write_text
from textjepa.train.model_card import table


def write_bridge_card(bridge_file: Path, bridge: Bridge) -> Path:
    """Writes (atomically) and returns the card of the bridge just saved at `bridge_file`."""
    path = RunFiles(bridge_file).card
    atomic_write_text(path, render_bridge_card(bridge_file, bridge))
    return path


def render_bridge_card(bridge_file: Path, bridge: Bridge) -> str:
    name = Path(bridge_file).name
    info, world, decoder, projector = bridge.info, bridge.world, bridge.decoder, bridge.projector
    best = info.get("best") or {}
    train = info.get("train", {})
    front = [
        "---",
        "library_name: textjepa",
        "tags: [textjepa, prefix-bridge]",
        "textjepa_kind: bridge",
        f"textjepa_run_id: {info.get('run_id', '')}",
        f"textjepa_bridge: {name}",
        f"textjepa_step: {best.get('step', '')}",
        "---",
    ]
    lines = [
        *front,
        "",
        f"# {RunFiles(bridge_file).stem}",
        "",
        f"`{name}` is a prefix bridge: a projector (Linear, GELU, Linear) that turns a textjepa world model's "
        f"conditioning vector (its predicted next-turn latent) into {projector.prefix_tokens} soft tokens in the "
        "input embedding space of an LLM, which then writes the reply. It was trained by textjepa "
        "(`textjepa train-bridge`) with the LLM and the world model frozen; it works only with the two below.",
        "",
        "## What it belongs to",
        "",
        *table(
            ["", ""],
            [
                ("world model", f"`{world.get('file', '?')}` ({info.get('world_model', '')})"),
                ("world model weights hash", world.get("weights_hash", "")),
                ("world model tokenizer hash", world.get("tokenizer_hash", "")),
                ("LLM", f"{decoder.describe()} from {decoder.path}"),
                (
                    "projector",
                    f"latent {projector.latent_dim} -> width {projector.width} -> "
                    f"{projector.prefix_tokens} x {projector.hidden_size}",
                ),
            ],
        ),
        "",
        "Loading checks both: another world model (its weights hash) or another LLM (its token embeddings) is refused.",
        "",
        "## Training settings",
        "",
        *table(["setting", "value"], setting_rows(train)),
        "",
        f"Precision: {info.get('precision', 'fp32')} ({info.get('precision_reason', 'as requested')}).",
        "",
        "## Validation of the kept step",
        "",
        *validation_lines(best, train),
        "",
        "## How to use it",
        "",
        "```bash",
        f'textjepa infer {world.get("file", "WORLD_MODEL")} "hello" --decoder transformers --bridge {name}',
        f"textjepa eval-conditioning {world.get('file', 'WORLD_MODEL')} {name}   # NLL of the replies, with and "
        "without the conditioning",
        "```",
    ]
    return "\n".join(lines) + "\n"


def setting_rows(train: dict) -> list[tuple[str, object]]:
    """The run's settings as given (nested ones as `train.lr`), not where its files went."""
    rows: list[tuple[str, object]] = []
    for key, value in train.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{inner}", item) for inner, item in value.items() if inner != "out_dir"]
        elif key != "out":
            rows.append((key, value))
    return rows


def validation_lines(best: dict, train: dict) -> list[str]:
    """The kept step's metrics: the LM's mean NLL of the held-out replies after the prefix of each pair's own
    conditioning (matched) and of another pair's (shuffled)."""
    metrics = [(key, value) for key, value in best.items() if key != "step" and isinstance(value, float)]
    if not any(key.startswith("val_") for key, _ in metrics):
        return [f"Step {best.get('step', '?')} (no validation was run; --val-pairs 0): its training record.", ""] + (
            table(["metric", "value"], [(key, f"{value:.4f}") for key, value in metrics]) if metrics else []
        )
    return [
        f"Step {best.get('step', '?')} of {train.get('train', {}).get('steps', '?')}, the best of the run's "
        f"validations, on {train.get('val_pairs', '?')} pairs of the world model's training split kept out of "
        "bridge training: the LLM's mean per-token NLL of the true reply after the prefix of the pair's own "
        "conditioning (matched) and of another pair's (shuffled; lower matched than shuffled means the prefix "
        "carries the pair's content).",
        "",
        *table(["metric", "value"], [(key, "n/a" if math.isnan(value) else f"{value:.4f}") for key, value in metrics]),
    ]
