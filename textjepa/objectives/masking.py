"""Span masking inside each line, vectorised over the batch (no Python loop per row)."""

from __future__ import annotations

import torch

from textjepa.config import MaskingConfig


def sample_span_mask(valid: torch.Tensor, masking: MaskingConfig, generator: torch.Generator) -> torch.Tensor:
    """Boolean [B, T]: up to max_spans spans of 1..max_span_len tokens per row, inside the real tokens.

    At most max_masked_ratio of a row's real tokens are masked, at least one is masked and at least one
    stays visible (rows of fewer than two tokens get no mask).
    """
    batch, width = valid.shape
    device = valid.device
    lengths = valid.sum(1)
    n_spans = torch.randint(1, masking.max_spans + 1, (batch, 1), generator=generator, device=device)
    span_len = torch.randint(
        1, masking.max_span_len + 1, (batch, masking.max_spans), generator=generator, device=device
    )
    span_len = torch.minimum(span_len, (lengths - 1).clamp_min(1).unsqueeze(1))
    room = (lengths.unsqueeze(1) - span_len + 1).clamp_min(1)
    start = (torch.rand((batch, masking.max_spans), generator=generator, device=device) * room).long()
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
