"""Learning-rate and EMA-momentum schedules as plain functions of the step."""

from __future__ import annotations

import math

from textjepa.config import TrainConfig


def lr_factor(step: int, train: TrainConfig) -> float:
    """Linear warmup -> flat -> cosine decay to min_lr_ratio over the last decay_fraction of steps."""
    warmup = max(1, int(train.steps * train.warmup_fraction))
    decay_start = int(train.steps * (1.0 - train.decay_fraction))
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start or train.steps <= decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, train.steps - decay_start))
    return train.min_lr_ratio + (1.0 - train.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_momentum(step: int, train: TrainConfig) -> float:
    """Cosine increase from ema_start to ema_end over the run."""
    progress = min(1.0, step / max(1, train.steps - 1))
    return train.ema_end - (train.ema_end - train.ema_start) * 0.5 * (1.0 + math.cos(math.pi * progress))
