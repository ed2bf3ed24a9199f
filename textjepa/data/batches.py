"""Batches from a token store: a deterministic held-out split, length bucketing, rank sharding.

Nothing here holds an index of the whole corpus: records are drawn by number and the split is a
hash of the record number, so memory stays flat however large the store is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from textjepa.data.contract import Field, is_validation, pad_rows
from textjepa.data.tokens import TokenStore
from textjepa.data.vocab import PAD_ID
from textjepa.errors import TextJepaError


@dataclass
class Batch:
    """One padded batch: per field, ids [B, T] and a validity mask; record numbers; action ids."""

    ids: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    index: np.ndarray
    actions: np.ndarray | None

    @property
    def real_tokens(self) -> int:
        return int(sum(v.sum() for v in self.valid.values()))

    @property
    def padded_tokens(self) -> int:
        return int(sum(v.size for v in self.valid.values()))


def make_batch(store: TokenStore, index: np.ndarray, max_seq: int) -> Batch:
    """The records as model input, each field cut by the data contract's rule for its role."""
    ids, valid = {}, {}
    for name, field in store.fields.items():
        ids[name], valid[name] = pad_rows([field.record(int(i)) for i in index], Field(name), max_seq)
    actions = np.asarray(store.actions[index], dtype=np.int64) if store.actions is not None else None
    return Batch(ids=ids, valid=valid, index=np.asarray(index), actions=actions)


class TrainSampler:
    """Endless random training batches, grouped by length so little padding is computed.

    A pool of `pool_batches * batch` records is drawn, sorted by length and cut into batches whose
    order is then shuffled. The sampler's whole state (RNG and the pending pool) is small and is
    saved with the training state, so a resumed run continues the same data stream.
    """

    def __init__(
        self,
        store: TokenStore,
        batch: int,
        max_seq: int,
        val_fraction: float,
        seed: int,
        bucket_by_length: bool = True,
        pool_batches: int = 16,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.store, self.batch, self.max_seq = store, batch, max_seq
        self.val_fraction, self.seed = val_fraction, seed
        self.bucket_by_length, self.pool_batches = bucket_by_length, pool_batches
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.default_rng([seed, rank])
        self.pending: list[np.ndarray] = []
        n = len(store)
        self._shard_size = (n - rank + world_size - 1) // world_size
        if self._shard_size <= 0 or not self._has_train_records():
            raise TextJepaError(
                f"no training records left for rank {rank} after holding out the validation split "
                f"({n} records); lower --val-fraction or add data"
            )

    def _has_train_records(self) -> bool:
        probe = np.arange(min(self._shard_size, 4096)) * self.world_size + self.rank
        return bool((~is_validation(probe, self.val_fraction, self.seed)).any())

    def _draw_train_indices(self, count: int) -> np.ndarray:
        out: list[np.ndarray] = []
        have = 0
        while have < count:
            local = self.rng.integers(0, self._shard_size, size=max(count * 2, 64))
            index = local * self.world_size + self.rank
            index = index[~is_validation(index, self.val_fraction, self.seed)]
            out.append(index)
            have += len(index)
        return np.concatenate(out)[:count]

    def _refill(self) -> None:
        pool = self._draw_train_indices(self.batch * self.pool_batches)
        if self.bucket_by_length:
            first = next(iter(self.store.fields.values()))
            lengths = np.minimum(first.lengths(pool), self.max_seq)
            for field in list(self.store.fields.values())[1:]:
                lengths = lengths + np.minimum(field.lengths(pool), self.max_seq) * (self.max_seq + 1)
            pool = pool[np.argsort(lengths, kind="stable")]
        batches = [pool[i : i + self.batch] for i in range(0, len(pool), self.batch)]
        order = self.rng.permutation(len(batches))
        self.pending = [batches[i] for i in order]

    def next_batch(self) -> Batch:
        if not self.pending:
            self._refill()
        return make_batch(self.store, self.pending.pop(), self.max_seq)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "pending": [p.tolist() for p in self.pending]}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.pending = [np.asarray(p, dtype=np.int64) for p in state["pending"]]

    def restart_stream(self, step: int) -> None:
        """A fresh stream for this rank from `step`: used when a resumed run has another world size, so
        the saved per-rank positions do not apply."""
        self.rng = np.random.default_rng([self.seed, self.rank, step])
        self.pending = []

    def shard(self, rank: int, world_size: int, batch: int) -> TrainSampler:
        """The sampler rank `rank` of a `world_size`-process run with per-rank `batch` would use."""
        return TrainSampler(
            self.store,
            batch,
            self.max_seq,
            self.val_fraction,
            self.seed,
            self.bucket_by_length,
            self.pool_batches,
            rank=rank,
            world_size=world_size,
        )


class UnionSampler:
    """One process drawing exactly the union of the batches `world_size` ranks would draw.

    A debugging/testing aid (TEXTJEPA_EMULATE_WORLD_SIZE): 1 process x batch N*B sees the same global
    batches as N processes x batch B, so their losses can be compared.
    """

    def __init__(self, base: TrainSampler, world_size: int) -> None:
        if base.world_size != 1 or base.batch % world_size:
            raise TextJepaError(f"cannot emulate {world_size} ranks with batch {base.batch} (must divide it)")
        self.parts = [base.shard(rank, world_size, base.batch // world_size) for rank in range(world_size)]

    def next_batch(self) -> Batch:
        return concat_batches([part.next_batch() for part in self.parts])

    def state_dict(self) -> dict:
        return {"union": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        for part, part_state in zip(self.parts, state["union"], strict=True):
            part.load_state_dict(part_state)

    def restart_stream(self, step: int) -> None:
        for part in self.parts:
            part.restart_stream(step)


def concat_batches(batches: list[Batch]) -> Batch:
    """Stack batches row-wise, re-padding every field to the widest of them."""
    ids, valid = {}, {}
    for name in batches[0].ids:
        width = max(b.ids[name].shape[1] for b in batches)
        ids[name] = np.concatenate(
            [np.pad(b.ids[name], ((0, 0), (0, width - b.ids[name].shape[1])), constant_values=PAD_ID) for b in batches]
        )
        valid[name] = np.concatenate(
            [np.pad(b.valid[name], ((0, 0), (0, width - b.valid[name].shape[1]))) for b in batches]
        )
    actions = None if batches[0].actions is None else np.concatenate([b.actions for b in batches])
    return Batch(ids=ids, valid=valid, index=np.concatenate([b.index for b in batches]), actions=actions)


def iter_split_batches(
    store: TokenStore,
    batch: int,
    max_seq: int,
    split: str,
    val_fraction: float,
    seed: int,
    max_batches: int | None = None,
    drop_last: bool = True,
) -> Iterator[Batch]:
    """Fixed batches in file order over the held-out split ("val"), the rest ("train") or "all"."""
    n = len(store)
    produced = 0
    carry = np.zeros(0, dtype=np.int64)
    for start in range(0, n, 1 << 16):
        index = np.arange(start, min(n, start + (1 << 16)), dtype=np.int64)
        if split != "all":
            held_out = is_validation(index, val_fraction, seed)
            index = index[held_out] if split == "val" else index[~held_out]
        carry = np.concatenate([carry, index])
        while len(carry) >= batch:
            yield make_batch(store, carry[:batch], max_seq)
            carry = carry[batch:]
            produced += 1
            if max_batches is not None and produced >= max_batches:
                return
    if len(carry) and not drop_last:
        yield make_batch(store, carry, max_seq)


def count_split(store: TokenStore, split: str, val_fraction: float, seed: int) -> int:
    n = len(store)
    if split == "all":
        return n
    total = 0
    for start in range(0, n, 1 << 16):
        held = is_validation(np.arange(start, min(n, start + (1 << 16))), val_fraction, seed)
        total += int(held.sum()) if split == "val" else int((~held).sum())
    return total
