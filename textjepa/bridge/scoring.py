"""Teacher-forced reply NLL under a soft prefix: the training loss of train-bridge and the measure of
eval-conditioning. Each row is [prefix (K embeddings)] [prompt ids] [reply ids], right-padded."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from textjepa.decoders.hf_model import CausalLM
from textjepa.precision import fp32_function


@fp32_function
def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy, in fp32 even under bf16 autocast (the softmax over the vocabulary)."""
    return F.cross_entropy(logits, targets, reduction="none")


def _hidden_then_head(model) -> bool:
    """Whether logits can be taken only at the reply positions (base model, then the LM head).

    That skips the vocabulary projection for prompt and padding positions (a fifth of a small LM's
    compute); models that post-process logits (soft-capping) take the full forward instead.
    """
    base = getattr(model, "base_model", model)
    return (
        base is not model
        and model.get_output_embeddings() is not None
        and getattr(model.config, "final_logit_softcapping", None) is None
    )


def reply_nll(
    lm: CausalLM,
    prefixes: torch.Tensor | None,
    prompts: Sequence[Sequence[int]],
    replies: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed NLL of the reply tokens and their count. Gradients flow into `prefixes`.

    prefixes: [B, K, hidden] or None (no prefix at all). Under bf16 autocast (--precision bf16) the LM's matmuls
    run in bf16; the NLL itself is computed in fp32.
    """
    rows = len(prompts)
    k = 0 if prefixes is None else prefixes.shape[1]
    width = max(len(p) + len(r) for p, r in zip(prompts, replies))
    ids = torch.zeros((rows, width), dtype=torch.long)
    mask = torch.zeros((rows, k + width), dtype=torch.long)
    positions, targets, owners = [], [], []
    for b, (prompt, reply) in enumerate(zip(prompts, replies)):
        tokens = list(prompt) + list(reply)
        ids[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[b, : k + len(tokens)] = 1
        start = k + len(prompt)
        for j, token in enumerate(reply):
            positions.append(b * (k + width) + start + j - 1)  # the position that predicts reply token j
            targets.append(token)
            owners.append(b)
    embeds = lm.embed(ids)
    if prefixes is not None:
        embeds = torch.cat([prefixes.to(device=embeds.device, dtype=embeds.dtype), embeds], dim=1)
    mask = mask.to(lm.device)
    model = lm.model
    index = torch.tensor(positions, dtype=torch.long, device=lm.device)
    if _hidden_then_head(model):
        hidden = model.base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        logits = model.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1]).index_select(0, index))
    else:
        full = model(inputs_embeds=embeds, attention_mask=mask).logits
        logits = full.reshape(-1, full.shape[-1]).index_select(0, index)
    nll = token_nll(logits.float(), torch.tensor(targets, device=lm.device))
    owner = torch.tensor(owners, dtype=torch.long, device=lm.device)
    sums = torch.zeros(rows, device=lm.device, dtype=nll.dtype).index_add(0, owner, nll)
    counts = torch.zeros(rows, device=lm.device, dtype=nll.dtype).index_add(0, owner, torch.ones_like(nll))
    return sums, counts
