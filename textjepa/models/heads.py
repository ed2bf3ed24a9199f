"""Heads on top of the encoder: JEPA predictor, world transition, conditioning head."""

from __future__ import annotations

import torch
from torch import nn

from textjepa.models.backbone import build_encoder
from textjepa.models.config import ModelConfig
from textjepa.models.encoder import _init_weights
from textjepa.models.linear import Linear, mlp

# Checkpoints name the conditioning head's tensors `bridge.*`, its name before "bridge" came to mean only the
# LLM prefix projector (textjepa/decoders/prefix_bridge.py); the submodule keeps that name so every checkpoint loads.
CONDITIONING_HEAD_KEY = "bridge"


class NormMLP(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, initialised like the encoder."""

    def __init__(self, width_in: int, hidden: int, width_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width_in), Linear(width_in, hidden), nn.GELU(), Linear(hidden, width_out))
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, fc1, _, fc2 = self.net  # its GELU (net[2]) is the one `mlp` runs
        return mlp(fc1, fc2, norm(x), upcast=True)  # its consumers, the losses, compute in fp32


class Predictor(NormMLP):
    """Maps online latents at masked positions to the teacher's latents (a bottleneck MLP)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.dim, config.predictor_width, config.dim)


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


class LinearTransition(nn.Module):
    """state -> state + W_a state + b_a, one matrix per action: a residual linear map, the identity (the "copy the
    context" baseline) at the start. On frozen pretrained latents it generalised where the MLP overfit (issue 22: a
    residual linear map trained with InfoNCE on frozen all-MiniLM-L6-v2 latents beat MiniLM fine-tuned)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        actions, dim = len(config.actions), config.dim
        self.weight = nn.Parameter(torch.zeros(actions, dim, dim))
        self.bias = nn.Parameter(torch.zeros(actions, dim))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[0] == 1:  # one action (reply): one matmul instead of a gathered batch of matrices
            return state + state @ self.weight[0].T + self.bias[0]
        return state + torch.einsum("bij,bj->bi", self.weight[action], state) + self.bias[action]


TRANSITION_MODULES = {"mlp": WorldTransition, "linear": LinearTransition}


class ConditioningHead(NormMLP):
    """Projects a predicted next latent to the conditioning vector (width cond_dim) that the text
    fallback of the LLM decoders reads; the prefix projector (textjepa/bridge/) reads the latent itself."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.predicted_dim, config.cond_dim, config.cond_dim)


class LatentModel(nn.Module):
    """What JEPA pretraining trains: the online encoder and the predictor."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.encoder = build_encoder(config)
        self.predictor = Predictor(config)


class WorldModel(nn.Module):
    """Encoder + transition + conditioning head: context -> state -> predicted next latent -> conditioning.

    With a frozen target space (config.target_dim, train-world --target-model) a linear target head maps the
    transition's output to that space: the predicted next latent is then of width target_dim.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config)
        self.transition = TRANSITION_MODULES[config.transition](config)
        self.add_module(CONDITIONING_HEAD_KEY, ConditioningHead(config))
        self.target_head = nn.Linear(config.dim, config.target_dim) if config.target_dim else None
        if self.target_head is not None:
            _init_weights(self.target_head)

    def to_target_space(self, latent: torch.Tensor) -> torch.Tensor:
        """A latent of the encoder's width in the space the predictions live in (itself without a target head)."""
        return latent if self.target_head is None else self.target_head(latent)

    def predict(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The predicted next latent of a state under an action."""
        return self.to_target_space(self.transition(state, action))

    @property
    def conditioning_head(self) -> ConditioningHead:
        return self.get_submodule(CONDITIONING_HEAD_KEY)

    def state(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.encoder.pooled(ids, valid)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.predict(self.state(ids, valid), action)
