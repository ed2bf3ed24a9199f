"""What every training command does around the loop: threads, device, precision, the process group, an
out-dir that holds no earlier run, and (train_on_store) the batches of a token store."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from textjepa.config import DataConfig, TrainConfig
from textjepa.data.batches import Batch, TrainSampler, iter_split_batches
from textjepa.data.contract import DataContract
from textjepa.data.tokens import TokenStore
from textjepa.errors import TextJepaError
from textjepa.io import RunKind, ensure_writable_dir, own_directory
from textjepa.precision import PrecisionChoice
from textjepa.runtime import (
    Distributed,
    broadcast_object,
    choose_precision,
    configure_threads,
    init_distributed,
    per_rank_batch,
    resolve_device,
    shutdown_distributed,
)
from textjepa.settings import Settings
from textjepa.train.checkpointer import RunCheckpointer, flat_settings, refuse_earlier_run
from textjepa.train.debug import DebugOptions
from textjepa.train.loop import Stage, TrainResult, run_training
from textjepa.train.validator import Validator


def describe_run(train: TrainConfig) -> dict:
    """What a checkpoint records about its run's settings (its data contract is recorded beside them)."""
    return {"train": dataclasses.asdict(train)}


@contextmanager
def training_session(
    train: TrainConfig, kind: RunKind, settings: Settings | None = None, dim: int | None = None
) -> Iterator[tuple[torch.device, Distributed, Path, PrecisionChoice]]:
    """What every training command does first: threads, device, precision (stated on the run's first line),
    process group (torchrun, described by `settings`), this rank's batch, a writable output directory that holds
    no earlier run of this kind (unless resumed or --overwrite) and that this run owns until it ends (no other run
    writes into it meanwhile: io.own_directory); the process group is shut down however the run ends. dim: the
    model's width where known (auto's training rule depends on it)."""
    settings = settings or Settings()
    configure_threads(settings)
    device = resolve_device(train.device)
    precision = choose_precision(train.precision, device, dim=dim)
    dist = init_distributed(device, settings=settings)
    try:
        train.batch = per_rank_batch(train.batch, train.global_batch, dist.world_size)
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        out_dir = Path(train.out_dir)
        with ExitStack() as owned:
            # Rank 0 owns the folder (the others write nothing in it); its refusal stops every rank.
            refusal = None
            if dist.is_main:
                try:
                    owned.enter_context(own_directory(out_dir))
                except TextJepaError as exc:
                    refusal = str(exc)
            refusal = broadcast_object(refusal, dist)
            if refusal is not None:
                raise TextJepaError(refusal)
            ensure_writable_dir(out_dir)
            refuse_earlier_run(train, out_dir, kind)
            if dist.is_main:
                print(precision.describe(), flush=True)
            yield device, dist, out_dir, precision
    finally:
        shutdown_distributed(dist)


def train_on_store(
    stage: Stage,
    store: TokenStore,
    path: Path,
    data: DataConfig,
    train: TrainConfig,
    max_seq: int,
    out_dir: Path,
    dist: Distributed,
    precision: PrecisionChoice,
    debug: DebugOptions | None = None,
    command: object | None = None,
) -> TrainResult:
    """This rank's share of the training split, batched, through the shared loop; validation on the
    held-out split (the first train.eval_batches batches, the same on every pass). command: the command's config,
    recorded in the training state (a resume says which of its settings changed)."""
    debug = debug or DebugOptions()
    contract = DataContract.for_training(data, max_seq, train.seed, str(path), store.corpus_hash)
    sampler = TrainSampler(
        store,
        train.batch,
        contract.max_seq,
        contract.val_fraction,
        contract.seed,
        train.bucket_by_length,
        rank=dist.rank,
        world_size=dist.world_size,
    )

    def validation_batches() -> Iterator[Batch]:
        return iter_split_batches(
            store,
            train.batch,
            contract.max_seq,
            "val",
            contract.val_fraction,
            contract.seed,
            max_batches=train.eval_batches,
        )

    # The checkpoint's info says what it was trained in (its weights are fp32 either way).
    run_info = {**describe_run(train), **precision.info()}
    settings = flat_settings(command) if command is not None else None
    checkpointer = RunCheckpointer(stage, out_dir, train, run_info, contract, settings)
    validator = Validator(stage, validation_batches, precision.precision)
    sampler = debug.sampler(sampler, dist)
    with checkpointer.disk_errors_say_what_is_kept():
        return run_training(stage, sampler, validator, checkpointer, train, dist, precision.precision, debug.log(dist))
