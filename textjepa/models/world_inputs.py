"""How a world batch becomes WorldModel inputs: the store's action ids mapped to the model's, tensors on
the device. Shared by world training and eval-world."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from textjepa.errors import TextJepaError
from textjepa.runtime import host_to_device

if TYPE_CHECKING:
    from textjepa.data.batches import Batch
    from textjepa.data.tokens import TokenStore


def action_mapping(store: TokenStore, actions: list[str], source: str) -> torch.Tensor:
    """Store action ids -> model action ids; an action the model does not know is an error."""
    unknown = [a for a in store.action_names if a not in actions]
    if unknown:
        raise TextJepaError(f"actions {unknown} in the data are unknown to {source} (it knows {actions})")
    return torch.tensor([actions.index(a) for a in store.action_names] or [0], dtype=torch.long)


def batch_tensors(batch: Batch, mapping: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's arrays on the device (through pinned memory, without blocking, to a CUDA device)."""
    actions = (
        mapping[torch.from_numpy(batch.actions)]
        if batch.actions is not None
        else torch.zeros(len(batch.index), dtype=torch.long)
    )
    return {
        "ids": host_to_device(batch.ids["context"], device),
        "valid": host_to_device(batch.valid["context"], device),
        "next_ids": host_to_device(batch.ids["next"], device),
        "next_valid": host_to_device(batch.valid["next"], device),
        "actions": host_to_device(actions, device),
    }
