"""A validation pass: the stage's metrics averaged over the held-out batches, and the score the best checkpoint
is chosen by."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from textjepa.errors import TextJepaError
from textjepa.precision import autocast

if TYPE_CHECKING:
    from textjepa.train.loop import Stage

# Validation draws its randomness (e.g. the latent stage's masks) from a generator seeded the same way on
# every pass, so that the passes of a run, and of a resumed run, measure the same thing.
VALIDATION_SEED = 12345
TOO_SMALL = "the validation split is smaller than one batch; raise --val-fraction or lower --batch"


class Validator:
    """`batches()` gives the held-out batches of one pass (the same on every pass)."""

    def __init__(self, stage: Stage, batches: Callable[[], Iterable[Any]], precision: str = "fp32") -> None:
        self.stage, self.batches, self.precision = stage, batches, precision

    def check_not_empty(self) -> None:
        """Before the first step: found at the first validation, it would cost the steps before it."""
        if next(iter(self.batches()), None) is None:
            raise TextJepaError(TOO_SMALL)

    def __call__(self) -> dict[str, float]:
        self.stage.model.eval()
        return validate(self.stage, self.batches(), self.precision)


def validate(stage: Stage, batches: Iterable[Any], precision: str = "fp32") -> dict[str, float]:
    """One validation pass: the stage's metrics averaged over the held-out batches, and the score first."""
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    sums: dict[str, float] = {}
    count = 0
    with torch.no_grad(), autocast(next(stage.model.parameters()).device, precision):
        for batch in batches:
            for name, value in stage.validation_metrics(batch, generator).items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
    if count == 0:
        raise TextJepaError(TOO_SMALL)
    metrics = {name: total / count for name, total in sums.items()}
    return {"score": stage.score(metrics), **metrics}
