"""The world model's loss. A new term is a weight in WorldLossConfig (textjepa/objectives/configs.py, torch-free so
that the CLI reads its settings without importing torch), its value in WorldLoss.forward here, plus its test in
tests/test_objectives.py: the CLI flag, the metrics log and the checkpoint's record of the loss settings follow.

loss = alignment (2 - 2 cos to the teacher's next-turn latent)
     + infonce_weight * InfoNCE of the prediction among the batch's next-turn targets (and, with queue_size,
       the queue of recent batches' targets as further negatives, MoCo-style)
     + regulariser on the predictions (so they do not collapse to the mean)
     + cond_weight * similarity-structure loss of the conditioning head (metric "cond")
     + reply_contrast_weight * InfoNCE against the online encoder's own latents of the next turns.
The conditioning head sees the prediction detached: it learns to keep the targets' similarity structure
in the conditioning vector without pulling the transition towards itself. With symmetric_infonce both
InfoNCE terms are the mean of the two directions (CLIP-style: each target also picks its prediction among the
batch's); with learn_temperature their temperature is a learned log-scale parameter of the loss.

The queue and the learned temperature are the loss's own state (its tensors outside `model`): the training
loop saves them in the training state and optimises the temperature, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from textjepa.objectives.configs import WorldLossConfig
from textjepa.objectives.regularizers import regularizer_loss
from textjepa.objectives.terms import ModelLoss, alignment_loss, info_nce, similarity_structure_loss

if TYPE_CHECKING:  # config.py nests this file's config, and models/heads.py imports config.py
    from textjepa.models.heads import WorldModel


class WorldLoss(ModelLoss):
    """The loss of world-model training on a WorldModel; forward returns the total and each term by name."""

    model: WorldModel
    config: WorldLossConfig
    seed_offset = 29
    # The learned temperature stays within CLIP's bounds (a logit scale of at most 100).
    TEMPERATURE_RANGE = (0.01, 1.0)

    def __init__(self, model: WorldModel, config: WorldLossConfig, seed: int) -> None:
        super().__init__(model, config, seed)
        if config.queue_size > 0:
            dim, max_seq = model.config.predicted_dim, model.config.max_seq
            self.register_buffer("queue", torch.zeros(config.queue_size, dim))
            # A hash of each queued reply's tokens, to skip the entries that are a row's own reply.
            self.register_buffer("queue_keys", torch.zeros(config.queue_size, dtype=torch.long))
            self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # entries written so far
            multipliers = torch.randint(1, 2**62, (max_seq,), generator=torch.Generator().manual_seed(0))
            self.register_buffer("key_multipliers", multipliers, persistent=False)
        if config.learn_temperature:
            self.log_inverse_temperature = nn.Parameter(torch.tensor(math.log(1.0 / config.temperature)))

    def temperature(self) -> float | torch.Tensor:
        if not self.config.learn_temperature:
            return self.config.temperature
        low, high = self.TEMPERATURE_RANGE
        return 1.0 / self.log_inverse_temperature.exp().clamp(1.0 / high, 1.0 / low)

    def reply_keys(self, next_ids: torch.Tensor, next_valid: torch.Tensor) -> torch.Tensor:
        """A hash of each reply's tokens (padding ignored; int64 products wrap): equal replies, equal keys."""
        width = next_ids.shape[1]
        return (next_ids.long() * next_valid.long() * self.key_multipliers[:width]).sum(dim=1)

    def queued(self) -> tuple[torch.Tensor, torch.Tensor]:
        filled = int(self.queue_filled.clamp(max=len(self.queue)))
        return self.queue[:filled], self.queue_keys[:filled]

    @torch.no_grad()
    def enqueue(self, target: torch.Tensor, keys: torch.Tensor) -> None:
        """Write the batch's targets over the oldest entries (a ring buffer)."""
        size = len(self.queue)
        target, keys = target[-size:], keys[-size:]
        slots = (int(self.queue_filled) + torch.arange(len(target), device=target.device)) % size
        self.queue[slots] = torch.nn.functional.normalize(target.float(), dim=-1)
        self.queue_keys[slots] = keys
        self.queue_filled += len(target)

    def contrast(self, prediction: torch.Tensor, targets: torch.Tensor, **negatives) -> torch.Tensor:
        """InfoNCE, both ways when symmetric (the queue holds targets, so it serves the forward way only)."""
        temperature = self.temperature()
        forward = info_nce(prediction, targets, temperature, **negatives)
        if not self.config.symmetric_infonce:
            return forward
        return (forward + info_nce(targets, prediction, temperature)) / 2

    def forward(
        self,
        ids: torch.Tensor,
        valid: torch.Tensor,
        actions: torch.Tensor,
        target: torch.Tensor,
        next_ids: torch.Tensor,
        next_valid: torch.Tensor,
        frozen: bool,
        state: torch.Tensor | None = None,
        reply_state: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """ids/valid: the contexts; target: the teacher's pooled next-turn latents (or, with a target model, the
        frozen model's embeddings of them); next_ids/next_valid: the
        next turns themselves; frozen: the encoder gets no gradient (the first freeze_encoder_steps).
        state / reply_state: the contexts' and next turns' pooled latents when they are already known (a frozen
        encoder's, cached: train-world --backbone-mode frozen); the encoder then runs no forward pass."""
        cfg, world = self.config, self.model
        if state is None:
            state = world.state(ids, valid)
        if frozen:
            state = state.detach()
        prediction = world.predict(state, actions)
        align = alignment_loss(prediction, target)
        negatives = {}
        if cfg.queue_size > 0:
            keys = self.reply_keys(next_ids, next_valid)
            queue, queue_keys = self.queued()
            negatives = {"negatives": queue, "excluded": keys[:, None] == queue_keys[None, :]}
        contrast = self.contrast(prediction, target, **negatives)
        reg, reg_parts = regularizer_loss(prediction, cfg.regularization, self.generator)
        structure = similarity_structure_loss(world.conditioning_head(prediction.detach()), target)
        total = align + cfg.infonce_weight * contrast + reg + cfg.cond_weight * structure
        parts = {}
        if cfg.reply_contrast_weight > 0:
            reply_latent = world.state(next_ids, next_valid) if reply_state is None else reply_state
            if frozen:
                reply_latent = reply_latent.detach()
            # In a frozen target space the encoder's reply latent is compared through the same target head.
            reply_latent = world.to_target_space(reply_latent)
            reply_contrast = self.contrast(prediction, reply_latent)
            total = total + cfg.reply_contrast_weight * reply_contrast
            parts["reply_contrast"] = reply_contrast.detach()
        if cfg.queue_size > 0:
            self.enqueue(target, keys)
        if cfg.learn_temperature:
            parts["temperature"] = torch.as_tensor(self.temperature()).detach()
        return {
            "loss": total,
            **parts,
            "alignment": align.detach(),
            "infonce": contrast.detach(),
            "cond": structure.detach(),
            **reg_parts,
        }
