"""Span masking inside each line, vectorised over the batch (no Python loop per row)."""

from __future__ import annotations

import numpy as np
import torch

from textjepa.data.vocab import MASK_ID
from textjepa.objectives.configs import MaskingConfig

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mask_uniform_columns(masking: MaskingConfig) -> int:
    """How many uniforms one row's mask consumes: span count, span lengths, span starts."""
    return 1 + 2 * masking.max_spans


def keyed_uniforms(keys: np.ndarray, salt: int, columns: int) -> torch.Tensor:
    """[len(keys), columns] uniforms in [0, 1) that depend only on (key, salt, column).

    Training keys them by record number and salts them with (seed, step), so a row gets the same mask
    whichever batch, rank or world size draws it, and a resumed run masks exactly as an uninterrupted one.
    """
    keys = np.asarray(keys, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = keys[:, None] * np.uint64(columns) + np.arange(columns, dtype=np.uint64)[None, :]
        x = x ^ (np.uint64(salt & 0xFFFFFFFFFFFFFFFF) * _GOLDEN)
        # splitmix64 finaliser
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(40)).astype(np.float32) / float(1 << 24))


def sample_span_mask(
    valid: torch.Tensor,
    masking: MaskingConfig,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean [B, T]: up to max_spans spans of 1..max_span_len tokens per row, inside the real tokens.

    At most max_masked_ratio of a row's real tokens are masked, at least one is masked and at least one
    stays visible (rows of fewer than two tokens get no mask). The randomness comes from `generator`, or
    from per-row `uniforms` [B, mask_uniform_columns(masking)] (see keyed_uniforms).
    """
    batch, width = valid.shape
    device = valid.device
    lengths = valid.sum(1)
    spans = masking.max_spans
    if uniforms is None:
        uniforms = torch.rand((batch, mask_uniform_columns(masking)), generator=generator)
    uniforms = uniforms.to(device)
    n_spans = 1 + (uniforms[:, :1] * spans).long().clamp_max(spans - 1)
    span_len = 1 + (uniforms[:, 1 : 1 + spans] * masking.max_span_len).long().clamp_max(masking.max_span_len - 1)
    span_len = torch.minimum(span_len, (lengths - 1).clamp_min(1).unsqueeze(1))
    room = (lengths.unsqueeze(1) - span_len + 1).clamp_min(1)
    start = (uniforms[:, 1 + spans :] * room).long()
    used = torch.arange(masking.max_spans, device=device).unsqueeze(0) < n_spans
    pos = torch.arange(width, device=device).view(1, 1, width)
    covered = (pos >= start.unsqueeze(-1)) & (pos < (start + span_len).unsqueeze(-1)) & used.unsqueeze(-1)
    mask = covered.any(1) & valid
    cap = torch.minimum((lengths.float() * masking.max_masked_ratio).floor().long().clamp_min(1), lengths - 1)
    # Keep only the first `cap` masked positions of each row.
    mask = mask & (mask.long().cumsum(1) <= cap.unsqueeze(1))
    return mask


def span_ids(mask: torch.Tensor) -> torch.Tensor:
    """Number each contiguous masked run per row 1, 2, ... (0 = not masked) across the batch: [B, T]."""
    starts = mask & ~torch.nn.functional.pad(mask, (1, 0))[:, :-1]
    numbered = starts.flatten().long().cumsum(0).view_as(mask)
    return numbered * mask.long()


def masked_view(
    batch_ids: torch.Tensor,
    valid: torch.Tensor,
    masking: MaskingConfig,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    mask_id: int = MASK_ID,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The online encoder's view of a batch: span-masked positions replaced by the encoder's mask token (`mask_id`:
    textjepa's <mask>, or a pretrained backbone's [MASK]); and the mask."""
    mask = sample_span_mask(valid.cpu(), masking, generator, uniforms).to(valid.device)
    return batch_ids.masked_fill(mask, mask_id), mask
