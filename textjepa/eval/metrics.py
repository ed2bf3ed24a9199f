"""Metrics of predicted latents against true ones: cosine, distance and in-batch retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from textjepa.errors import TextJepaError
from textjepa.io import atomic_write_text
from textjepa.precision import fp32_function


@fp32_function  # ranks by cosine in fp32 even inside a bf16 autocast region (the training stage's validation)
def retrieval_metrics(prediction: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Row i of `prediction` should retrieve row i of `targets` among all rows (cosine ranking)."""
    p = F.normalize(prediction.float(), dim=-1)
    t = F.normalize(targets.float(), dim=-1)
    scores = p @ t.T
    true_scores = scores.diagonal().unsqueeze(1)
    rank = 1 + (scores > true_scores).sum(1).float()  # ties count in the prediction's favour
    return {
        "cosine_mean": float((p * t).sum(-1).mean()),
        "l2_mean": float((p - t).norm(dim=-1).mean()),
        "top1": float((rank <= 1).float().mean()),
        "top5": float((rank <= 5).float().mean()),
        "mrr": float((1.0 / rank).mean()),
        "mean_rank": float(rank.mean()),
        "candidates": float(len(t)),
    }


class MetricAverager:
    """Averages per-batch metrics weighted by the number of rows each batch scored."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.rows = 0

    def add(self, metrics: dict[str, float], rows: int) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value * rows
        self.rows += rows

    def result(self) -> dict[str, float]:
        return {k: v / max(1, self.rows) for k, v in self.sums.items()}


def format_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """A plain text table: one row per model/baseline, one column per metric."""
    name_width = max(len(name) for name in rows) + 2
    header = "".ljust(name_width) + "".join(c.rjust(14) for c in columns)
    lines = [header]
    for name, metrics in rows.items():
        # A row without a metric (a lexical baseline has no latent cosine) shows "-".
        cells = (f"{metrics[c]:14.4f}" if c in metrics else "-".rjust(14) for c in columns)
        lines.append(name.ljust(name_width) + "".join(cells))
    return "\n".join(lines)


def write_json_report(target: str, report: dict) -> None:
    """`--json FILE` (atomically) or `--json -` (stdout)."""
    text = json.dumps(report, indent=2)
    if target == "-":
        print(text)
        return
    try:
        atomic_write_text(Path(target), text + "\n")
    except OSError as exc:
        raise TextJepaError(f"cannot write {target}: {exc.strerror}") from exc
