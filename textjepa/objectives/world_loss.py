"""The world model's loss. A new term is added here (a weight in WorldLossConfig, its value in
WorldLoss.forward) plus its test in tests/test_objectives.py: the CLI flag, the metrics log and the
checkpoint's record of the loss settings follow from these two.

loss = alignment (2 - 2 cos to the teacher's next-turn latent)
     + infonce_weight * InfoNCE of the prediction among the batch's next-turn targets
     + regulariser on the predictions (so they do not collapse to the mean)
     + bridge_weight * similarity-structure loss of the conditioning head
     + reply_contrast_weight * InfoNCE against the online encoder's own latents of the next turns.
The conditioning head sees the prediction detached: it learns to keep the targets' similarity structure
in the conditioning vector without pulling the transition towards itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from textjepa.errors import TextJepaError
from textjepa.objectives.regularizers import RegularizerConfig, regularizer_loss
from textjepa.objectives.terms import ModelLoss, alignment_loss, info_nce, similarity_structure_loss

if TYPE_CHECKING:  # config.py nests this file's config, and models/heads.py imports config.py
    from textjepa.models.heads import WorldModel


@dataclass
class WorldLossConfig:
    """The world loss's term weights."""

    infonce_weight: float = field(default=1.0, metadata={"help": "in-batch next-turn contrast"})
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature"})
    bridge_weight: float = field(
        default=1.0,
        metadata={"help": "similarity-structure loss of the conditioning head (the vector the text fallback reads)"},
    )
    # InfoNCE of the prediction against the online encoder's own latent of the next turn, so the encoder
    # (and through the EMA the teacher) learns to represent replies, not only contexts.
    reply_contrast_weight: float = field(
        default=1.0, metadata={"help": "InfoNCE against the online encoder's latent of the next turn"}
    )
    regularization: RegularizerConfig = field(
        default_factory=RegularizerConfig, metadata={"help": "the anti-collapse term (see RegularizerConfig)"}
    )

    def validate(self) -> None:
        if not self.temperature > 0:
            raise TextJepaError(f"temperature must be positive, got {self.temperature}")
        self.regularization.validate()


class WorldLoss(ModelLoss):
    """The loss of world-model training on a WorldModel; forward returns the total and each term by name."""

    model: WorldModel
    config: WorldLossConfig
    seed_offset = 29

    def forward(
        self,
        ids: torch.Tensor,
        valid: torch.Tensor,
        actions: torch.Tensor,
        target: torch.Tensor,
        next_ids: torch.Tensor,
        next_valid: torch.Tensor,
        frozen: bool,
    ) -> dict[str, torch.Tensor]:
        """ids/valid: the contexts; target: the teacher's pooled next-turn latents; next_ids/next_valid: the
        next turns themselves; frozen: the encoder gets no gradient (the first freeze_encoder_steps)."""
        cfg, world = self.config, self.model
        state = world.state(ids, valid)
        if frozen:
            state = state.detach()
        prediction = world.transition(state, actions)
        align = alignment_loss(prediction, target)
        contrast = info_nce(prediction, target, cfg.temperature)
        reg, reg_parts = regularizer_loss(prediction, cfg.regularization, self.generator)
        structure = similarity_structure_loss(world.conditioning_head(prediction.detach()), target)
        total = align + cfg.infonce_weight * contrast + reg + cfg.bridge_weight * structure
        parts = {}
        if cfg.reply_contrast_weight > 0:
            reply_latent = world.state(next_ids, next_valid)
            if frozen:
                reply_latent = reply_latent.detach()
            reply_contrast = info_nce(prediction, reply_latent, cfg.temperature)
            total = total + cfg.reply_contrast_weight * reply_contrast
            parts["reply_contrast"] = reply_contrast.detach()
        return {
            "loss": total,
            **parts,
            "alignment": align.detach(),
            "infonce": contrast.detach(),
            "bridge": structure.detach(),
            **reg_parts,
        }
