"""The JEPA loss: the online encoder sees the masked line, the predictor maps its latents at the masked
positions to the teacher's latents of the full line; a regulariser keeps the latents from collapsing.

loss = alignment (2 - 2 cos, predicted vs teacher latent at each masked position)
     + regulariser (VICReg or SIGReg) on the online latents of the real tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from textjepa.objectives.configs import JepaLossConfig
from textjepa.objectives.regularizers import regularizer_loss
from textjepa.objectives.terms import ModelLoss, alignment_loss

if TYPE_CHECKING:  # config.py nests this file's config, and models/heads.py imports config.py
    from textjepa.models.heads import LatentModel

# The regulariser's statistics are taken on at most this many token rows (sampled), which bounds its cost.
MAX_REGULARIZER_ROWS = 1024


class JepaLoss(ModelLoss):
    """The loss of JEPA pretraining on a LatentModel; forward returns the total and each term by name."""

    model: LatentModel
    config: JepaLossConfig
    seed_offset = 17

    def forward(
        self, ids: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """ids: the masked view [B, T]; mask: the masked positions; target: the teacher's latents [B, T, D]."""
        latents = self.model.encoder(ids, valid)
        prediction = self.model.predictor(latents[mask])
        align = alignment_loss(prediction, target[mask])
        rows = latents[valid]
        if len(rows) > MAX_REGULARIZER_ROWS:
            pick = torch.randperm(len(rows), generator=self.generator)[:MAX_REGULARIZER_ROWS].to(rows.device)
            rows = rows[pick]
        reg, reg_parts = regularizer_loss(rows, self.config.regularization, self.generator)
        return {"loss": align + reg, "alignment": align.detach(), **reg_parts}
