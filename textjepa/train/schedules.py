"""Learning-rate and EMA-momentum schedules as plain functions of the step."""

from __future__ import annotations

import math

from textjepa.config import TrainConfig


def warmup_cosine(step: int, steps: int, warmup_fraction: float, decay_start: int | None, min_ratio: float) -> float:
    """Linear warmup over warmup_fraction of the steps -> flat -> cosine decay from step decay_start (None:
    straight after the warmup) to min_ratio at the last step."""
    warmup = max(1, int(steps * warmup_fraction))
    decay_start = warmup if decay_start is None else decay_start
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start or steps <= decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, steps - decay_start))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_factor(step: int, train: TrainConfig) -> float:
    """The training stages' schedule: the last decay_fraction of the steps decay to min_lr_ratio."""
    decay_start = int(train.steps * (1.0 - train.decay_fraction))
    return warmup_cosine(step, train.steps, train.warmup_fraction, decay_start, train.min_lr_ratio)


def ema_momentum(step: int, train: TrainConfig) -> float:
    """Cosine increase from ema_start to ema_end over the run."""
    progress = min(1.0, step / max(1, train.steps - 1))
    return train.ema_end - (train.ema_end - train.ema_start) * 0.5 * (1.0 + math.cos(math.pi * progress))
