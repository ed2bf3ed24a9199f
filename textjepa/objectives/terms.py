"""What the losses are built from: the base of a loss over a model, and the terms (alignment of unit
vectors, in-batch InfoNCE, similarity structure)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textjepa.precision import fp32_function


class ModelLoss(nn.Module):
    """A loss over a model (sentence-transformers style): it holds the model, its config and a random
    generator of its own (seeded from the training seed plus the loss's seed_offset, so that the losses'
    streams differ); forward returns {"loss": total, term name: detached value, ...}."""

    seed_offset = 0

    def __init__(self, model: nn.Module, config: object, seed: int) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.generator = torch.Generator().manual_seed(seed + self.seed_offset)


@fp32_function
def alignment_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of unit vectors, 2 - 2 cos."""
    return (2.0 - 2.0 * F.cosine_similarity(prediction.float(), target.float(), dim=-1)).mean()


@fp32_function
def info_nce(
    prediction: torch.Tensor,
    targets: torch.Tensor,
    temperature: float | torch.Tensor,
    negatives: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each prediction should be closest to its own target among the batch's targets (and `negatives`,
    further candidates that are nobody's target, e.g. a queue of earlier batches' targets; `excluded`
    [rows, negatives] drops the ones that are a row's own target in another guise)."""
    unit = F.normalize(prediction.float(), dim=-1)
    logits = unit @ F.normalize(targets.float(), dim=-1).T / temperature
    if negatives is not None and len(negatives):
        extra = unit @ F.normalize(negatives.float(), dim=-1).T / temperature
        if excluded is not None:  # after the division: a learned temperature's gradient stays finite
            extra = extra.masked_fill(excluded, float("-inf"))
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits, torch.arange(len(prediction), device=prediction.device))


@fp32_function
def similarity_structure_loss(projected: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Train a projection to keep the in-batch cosine-similarity structure of `reference`."""
    a = F.normalize(projected.float(), dim=-1)
    b = F.normalize(reference.float(), dim=-1)
    return (a @ a.T - b @ b.T).pow(2).mean()
