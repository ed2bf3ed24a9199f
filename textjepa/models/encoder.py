"""The transformer encoder: token + position embeddings, pre-norm blocks, final LayerNorm.

Attention goes through scaled_dot_product_attention with a padding mask, so padding never takes
part in attention and padded outputs are zeroed; under a CPU bf16 autocast it runs in fp32 where a backward follows
(see `SelfAttention._fp32_attention`).

`Encoder.pooled` is the one way a text becomes one latent (the world model's state, the teacher's next-turn
targets, the retrieval index, the Python API, evaluation). `ModelConfig.pooling` chooses how:
- "mean": the mean of the final token latents over real tokens;
- "lexical": the mean of the final token latents plus `lexical_weight` times the mean of the layer-normed token
  embeddings (a skip from the vocabulary around the blocks; each part scaled to the same length first), both
  weighted by each token's squared inverse document frequency in the world-model training corpus.
Pooled contextual latents keep little of *which* words a text uses (measured: "copy the context" near chance on
held-out pairs even after JEPA), while a weighted sum of near-orthogonal token embeddings is a random projection
of the text's TF-IDF vector: the latent starts from lexical overlap and training adds to it. The weights are a
buffer of the encoder and travel in its checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from textjepa.data.vocab import MASK_ID, PAD_ID
from textjepa.models.config import ModelConfig
from textjepa.models.linear import Linear, bf16_heads, cpu_bf16_autocast, mlp, split_heads


def attention(qkv: torch.Tensor, heads: int, attn_mask: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of one fused projection qkv [B, T, 3 * D] -> [B, T, D]."""
    # Without a backward, the views alone: an autograd Function call is overhead that serving short texts would pay.
    q, k, v = _SplitHeads.apply(qkv, heads) if qkv.requires_grad else split_heads(qkv, heads)
    return heads_attention(q, k, v, attn_mask)


def heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
    """Attention of q, k, v [B, H, T, D / H] -> [B, T, D]."""
    batch, heads, length, head_dim = q.shape
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).reshape(batch, length, heads * head_dim)


class _SplitHeads(torch.autograd.Function):
    """split_heads; the backward writes their gradients into one
    [B, T, 3 * D] tensor. Autograd's own backward of the view, permute and unbind stacks the three gradients and then
    copies the permuted stack again to make it contiguous: one copy of qkv's size more, about a tenth of attention's
    forward and backward (measured on a CPU; docs/results.md, issue 23). The same numbers either way."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
        return split_heads(qkv, heads)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        shaped = next(g for g in grads if g is not None)
        batch, heads, length, head_dim = shaped.shape
        grad = shaped.new_empty(batch, length, 3, heads, head_dim)
        for part, g in enumerate(grads):
            if g is None:  # a part that reached no loss
                grad[:, :, part].zero_()
            else:
                grad[:, :, part].copy_(g.transpose(1, 2))
        return grad.view(batch, length, 3 * heads * head_dim), None


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = Linear(dim, 3 * dim)  # one GEMM for queries, keys and values
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        if self._fp32_attention(x):
            q, k, v = bf16_heads(self.qkv, x, self.heads)  # the bf16 GEMM's result cast up in the heads' layout
            with torch.autocast("cpu", enabled=False):
                out = heads_attention(q, k, v, attn_mask)
        else:
            out = attention(self.qkv(x), self.heads, attn_mask)
        return self.proj(out, upcast=True)  # the residual stream is fp32 (see Linear.forward)

    def _fp32_attention(self, x: torch.Tensor) -> bool:
        """Whether attention runs in fp32 under a bf16 autocast: on a CPU, where a backward follows. Measured on an
        AMX CPU (docs/results.md, issue 23), torch's bf16 flash-attention backward took a third of a bf16 training
        step, slower than the same kernel in fp32, and the bf16 math kernel was slower than this too. Without a
        backward (encoding, serving, the teacher's targets) the bf16 kernel is the faster one. The softmax is fp32
        either way (the CPU kernel accumulates bf16 in fp32). On CUDA attention stays under autocast."""
        if not (torch.is_grad_enabled() and cpu_bf16_autocast(x)):
            return False
        return x.requires_grad or any(p.requires_grad for p in self.qkv.parameters())


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(Linear(dim, mlp_ratio * dim), nn.GELU(), Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        fc1, _, fc2 = self.mlp  # its GELU (mlp[1]) is the one `mlp` runs
        return x + mlp(fc1, fc2, self.norm2(x), upcast=True)


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.position_embedding = nn.Embedding(config.max_seq, config.dim)
        self.blocks = nn.ModuleList(Block(config.dim, config.heads, config.mlp_ratio) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        if config.pooling == LEXICAL:
            self.lexical_norm = nn.LayerNorm(config.dim)
            # Uniform until set_token_weights (world training sets them from its corpus).
            self.register_buffer(TOKEN_WEIGHTS, torch.ones(config.vocab_size))
        self.apply(_init_weights)

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def max_seq(self) -> int:
        return self.config.max_seq

    @property
    def mask_id(self) -> int:
        """The id span masking puts at masked positions (a pretrained backbone's is its [MASK])."""
        return MASK_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def set_token_weights(self, weights: torch.Tensor) -> None:
        """The pooling weight of every token id (lexical pooling only)."""
        if self.config.pooling != LEXICAL:
            raise ValueError(f"token weights need lexical pooling; this encoder pools by {self.config.pooling!r}")
        self.token_weights.copy_(weights)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A JEPA checkpoint (--init-encoder) pools nothing, so it has no pooling tensors: they start as new.
        if self.config.pooling == LEXICAL:
            for name, tensor in self._pooling_defaults().items():
                state_dict.setdefault(prefix + name, tensor)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _pooling_defaults(self) -> dict[str, torch.Tensor]:
        return {
            TOKEN_WEIGHTS: torch.ones(self.config.vocab_size),
            "lexical_norm.weight": torch.ones(self.config.dim),
            "lexical_norm.bias": torch.zeros(self.config.dim),
        }

    def forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids, valid: [B, T] -> latents [B, T, dim], zero at padding."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions)
        # [B, 1, 1, T]: every query may attend only to real tokens of its own row.
        attn_mask = valid[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.norm(x) * valid.unsqueeze(-1).to(x.dtype)

    def pooling_latents(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """What `pool` reads: here the token latents themselves (a pretrained backbone adds its [CLS] and [SEP])."""
        return self(ids, valid)

    def pool(self, latents: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """This encoder's token latents [B, T, D] of `ids` -> one latent per row [B, D] (see the module doc)."""
        if self.config.pooling != LEXICAL:
            return masked_mean(latents, valid)
        # Weighted sums, not means: each part is scaled to unit length next, which the mean's division would not
        # change. Each part then at length sqrt(dim) (a LayerNorm'd vector's), mixed by lexical_weight: pooled
        # near-orthogonal embeddings are much shorter than pooled contextual latents, which would drown them.
        weights = (self.token_weights[ids] * valid).to(latents.dtype)
        contextual = torch.einsum("bt,btd->bd", weights, latents)
        lexical = torch.einsum("bt,btd->bd", weights, self.lexical_norm(self.token_embedding(ids)).to(latents.dtype))
        scale = self.config.dim**0.5
        return scale * (F.normalize(contextual, dim=-1) + self.config.lexical_weight * F.normalize(lexical, dim=-1))

    def pooled(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids, valid: [B, T] -> one latent per row [B, D]."""
        return self.pool(self(ids, valid), ids, valid)


LEXICAL = "lexical"
TOKEN_WEIGHTS = "token_weights"


def masked_mean(latents: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens only: [B, T, D] x [B, T] -> [B, D]."""
    weights = valid.to(latents.dtype).unsqueeze(-1)
    return (latents * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def pooling_weights(chunks: Iterable[tuple[np.ndarray, np.ndarray]], vocab_size: int) -> torch.Tensor:
    """Every token id's lexical pooling weight: the square of its smoothed inverse document frequency,
    ln((1 + N) / (1 + df)) + 1 (scikit-learn's TF-IDF formula). Squared because a pooled latent's dot product
    multiplies two texts' weights of a shared token: squaring sharpens the match towards rare tokens, which
    measured better than the plain IDF on all three sets of bench/quality.py (docs/results.md).

    `chunks` yields (tokens, lengths): the flat token ids of some documents and each document's length. A token
    absent from the corpus gets the largest weight, as a token seen once would.
    """
    frequency = np.zeros(vocab_size, dtype=np.int64)
    count = 0
    for tokens, lengths in chunks:
        document = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        # Each (document, token) pair once: document frequency, not term frequency.
        pairs = np.unique(document * vocab_size + np.asarray(tokens, dtype=np.int64))
        frequency += np.bincount(pairs % vocab_size, minlength=vocab_size)[:vocab_size]
        count += len(lengths)
    idf = np.log((1.0 + count) / (1.0 + frequency)) + 1.0
    return torch.from_numpy(idf**2).float()


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
