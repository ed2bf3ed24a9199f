"""How a world batch becomes WorldModel inputs: the store's action ids mapped to the model's, tensors on
the device. Shared by world training and eval-world."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from textjepa.errors import TextJepaError

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
    actions = (
        mapping[torch.from_numpy(batch.actions)]
        if batch.actions is not None
        else torch.zeros(len(batch.index), dtype=torch.long)
    )
    return {
        "ids": torch.from_numpy(batch.ids["context"]).to(device),
        "valid": torch.from_numpy(batch.valid["context"]).to(device),
        "next_ids": torch.from_numpy(batch.ids["next"]).to(device),
        "next_valid": torch.from_numpy(batch.valid["next"]).to(device),
        "actions": actions.to(device),
    }
