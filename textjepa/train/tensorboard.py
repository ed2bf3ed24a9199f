"""`--tensorboard DIR`: the metrics log's records, also as TensorBoard scalars (the optional extra `tensorboard`).

The metrics log (`*.metrics.jsonl`) stays the record of a run; this mirrors every record it gets, as it gets it:
each number of a record becomes the scalar `<split>/<name>` at the record's step (`train/loss`, `train/lr`,
`train/tokens_per_s`, `val/score`, `val/val_mrr`, ...). A run writes under `DIR/<kind>` (latent, world, bridge), so
one DIR holds a demo's two stages as two TensorBoard runs.

A resumed run continues the same curves: the metrics log keeps its records up to the resumed step, and the writer
starts with a purge at the step after it, so TensorBoard drops what a killed run wrote beyond it (purge_step). A
fresh run purges from step 0: the curves of an earlier run in the same folder (one --overwrite replaced) are not
shown under the new one's.
"""

from __future__ import annotations

import math
from pathlib import Path

from textjepa.config import TENSORBOARD_INSTALL_HINT
from textjepa.errors import TextJepaError


class TensorBoardLog:
    """The writer of one run's scalars, opened at its first record (on the rank that writes the metrics log)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.purge_step = 0
        self.writer = None

    def begin(self, first_step: int) -> None:
        """The run writes from `first_step` on (0 for a fresh run, the resumed step + 1 for a resumed one)."""
        self.close()
        self.purge_step = first_step

    def write(self, record: dict) -> None:
        step = record.get("step", record.get("align_step"))
        if step is None:
            return
        if self.writer is None:
            self.writer = open_writer(self.directory, self.purge_step)
        split = record.get("split", "align" if "align_step" in record else "train")
        for name, value in record.items():
            if name in ("step", "split", "align_step") or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(f"{split}/{name}", float(value), int(step))
        # Flushed with every record (a record comes every few steps): a killed run's curves end where its log does.
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def open_writer(directory: Path, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TextJepaError(TENSORBOARD_INSTALL_HINT) from exc
    directory.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(directory), purge_step=purge_step)


def tensorboard_log(directory: str | None, kind: str) -> TensorBoardLog | None:
    """The run's TensorBoard log under `directory/<kind>`, or None without --tensorboard."""
    return TensorBoardLog(Path(directory) / kind) if directory else None
