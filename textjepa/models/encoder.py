"""The transformer encoder: token + position embeddings, pre-norm blocks, final LayerNorm.

Attention goes through scaled_dot_product_attention with a padding mask, so padding never takes
part in attention and padded outputs are zeroed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from textjepa.config import ModelConfig


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position_embedding = nn.Embedding(config.max_seq, config.dim)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.apply(_init_weights)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids, valid: [B, T] -> latents [B, T, dim], zero at padding."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)
        # [B, 1, 1, T]: every query may attend only to real tokens of its own row.
        attn_mask = valid[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.norm(x) * valid.unsqueeze(-1).to(x.dtype)


def masked_mean(latents: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only: [B, T, D] x [B, T] -> [B, D]."""
    weights = valid.to(latents.dtype).unsqueeze(-1)
    return (latents * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=0.02)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def format_size(parameters: int) -> str:
    """The seed's size tag: 9.51M, 512.0k."""
    if parameters >= 1_000_000:
        return f"{parameters / 1e6:.2f}M"
    return f"{parameters / 1e3:.1f}k"
