"""The PNG of the training curves written beside every metrics log."""

from __future__ import annotations

import json
from pathlib import Path

from textjepa.io import atomic_write


def plot_metrics(metrics_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        (val if record.get("split") == "val" else train).append(record)
    val_keys = [
        k for k in (val[0] if val else {}) if k not in ("step", "split") and isinstance(val[0][k], (int, float))
    ]
    panels = 1 + len(val_keys)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
    axes = axes[0]
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss")
    for ax, key in zip(axes[1:], val_keys):
        ax.plot([r["step"] for r in val], [r[key] for r in val], marker="o")
        ax.set_xlabel("step")
        ax.set_title(f"val {key}")
    fig.tight_layout()
    try:
        with atomic_write(png_path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)
