"""Heads on top of the encoder: JEPA predictor, world transition, decoder bridge."""

from __future__ import annotations

import torch
from torch import nn

from textjepa.config import ModelConfig
from textjepa.models.encoder import Encoder, _init_weights, masked_mean


class Predictor(nn.Module):
    """Maps online latents at masked positions to the teacher's latents (LayerNorm -> bottleneck MLP)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(config.dim),
            nn.Linear(config.dim, config.predictor_width),
            nn.GELU(),
            nn.Linear(config.predictor_width, config.dim),
        )
        self.apply(_init_weights)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


class WorldTransition(nn.Module):
    """[state ; action embedding] -> predicted next latent, as a residual on the state.

    The residual start makes the untrained transition equal to the "copy the context" baseline, so
    training has to earn everything beyond it.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.action_embedding = nn.Embedding(len(config.actions), config.dim)
        self.net = nn.Sequential(
            nn.LayerNorm(2 * config.dim),
            nn.Linear(2 * config.dim, 2 * config.dim),
            nn.GELU(),
            nn.Linear(2 * config.dim, config.dim),
        )
        self.apply(_init_weights)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return state + self.net(torch.cat([state, self.action_embedding(action)], dim=-1))


class DecoderBridge(nn.Module):
    """Projects a predicted next latent to the conditioning vector handed to a decoder."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(config.dim),
            nn.Linear(config.dim, config.bridge_dim),
            nn.GELU(),
            nn.Linear(config.bridge_dim, config.bridge_dim),
        )
        self.apply(_init_weights)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)


class LatentModel(nn.Module):
    """What JEPA pretraining trains: the online encoder and the predictor."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.encoder = Encoder(config)
        self.predictor = Predictor(config)


class WorldModel(nn.Module):
    """Encoder + transition + bridge: context -> state -> predicted next latent -> conditioning."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.transition = WorldTransition(config)
        self.bridge = DecoderBridge(config)

    def state(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return masked_mean(self.encoder(ids, valid), valid)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.transition(self.state(ids, valid), action)
