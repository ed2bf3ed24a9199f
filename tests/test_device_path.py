"""The CUDA path of the trainer, checked on the CPU (no GPU here): batches reach a CUDA device through pinned
memory without blocking, and a training step reads no number off a tensor (on a GPU every such read makes the
host wait for the device); the loop reads its metrics only when it logs, and still stops on a non-finite loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pair_lines, synthetic_lines

from textjepa.config import DataConfig, LatentConfig, ModelConfig, TrainConfig, WorldConfig
from textjepa.data.batches import TrainSampler
from textjepa.data.sources import LATENT_RECORDS, WORLD_RECORDS, load_corpus
from textjepa.errors import TextJepaError
from textjepa.models.world_inputs import action_mapping, batch_tensors
from textjepa.runtime import host_to_device, uses_pinned_copies
from textjepa.train.latent import LatentStage
from textjepa.train.loop import build_optimizer, train_step
from textjepa.train.progress import MetricWindow
from textjepa.train.schedules import lr_factor
from textjepa.train.world import WorldStage

SHAPE = {"dim": 32, "layers": 1, "heads": 2, "max_seq": 32, "vocab_size": 300}
# Every way Python code reads a value off a tensor into the host (each one a device synchronisation on a GPU).
HOST_READS = ("item", "tolist", "numpy", "__float__", "__int__", "__index__", "__bool__")


def test_pinned_non_blocking_copies_only_to_cuda():
    assert uses_pinned_copies(torch.device("cuda")) and uses_pinned_copies(torch.device("cuda", 1))
    assert not uses_pinned_copies(torch.device("cpu")) and not uses_pinned_copies(torch.device("meta"))
    # On the CPU the batch stays in the array's own memory: no staging copy, nothing pinned.
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    tensor = host_to_device(array, torch.device("cpu"))
    assert tensor.data_ptr() == array.ctypes.data and not tensor.is_pinned()
    assert torch.equal(host_to_device(torch.ones(2), torch.device("cpu")), torch.ones(2))


def count_host_reads(monkeypatch, run: Callable[[], object]) -> tuple[list[str], object]:
    """The tensor-to-host reads `run()` makes (the real methods still run: this only counts them)."""
    reads: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    try:
        result = run()
    finally:
        monkeypatch.undo()
    return reads, result


def world_stage(tmp_path: Path) -> tuple[WorldStage, TrainSampler, TrainConfig]:
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(pair_lines(96)) + "\n")
    cfg = WorldConfig(
        data=DataConfig(path=str(pairs), data_dir=str(tmp_path / "cache"), min_tokens=1),
        model=ModelConfig(**SHAPE),
        train=TrainConfig(steps=20, batch=8, progress=False),
    )
    tokenizer, store = load_corpus(pairs, WORLD_RECORDS, cfg.data, None, SHAPE["vocab_size"])
    config = dataclasses.replace(cfg.model, vocab_size=tokenizer.get_vocab_size(), actions=list(store.action_names))
    mapping = action_mapping(store, config.actions, "the test")
    stage = WorldStage(config, tokenizer, store, cfg, torch.device("cpu"), None, mapping)
    sampler = TrainSampler(store, cfg.train.batch, config.max_seq, cfg.data.val_fraction, 0)
    return stage, sampler, cfg.train


def latent_stage(tmp_path: Path) -> tuple[LatentStage, TrainSampler, TrainConfig]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(synthetic_lines(96)) + "\n")
    cfg = LatentConfig(
        data=DataConfig(path=str(corpus), data_dir=str(tmp_path / "cache")),
        model=ModelConfig(**SHAPE),
        train=TrainConfig(steps=20, batch=8, progress=False),
    )
    tokenizer, store = load_corpus(corpus, LATENT_RECORDS, cfg.data, None, SHAPE["vocab_size"])
    config = dataclasses.replace(cfg.model, vocab_size=tokenizer.get_vocab_size())
    stage = LatentStage(config, tokenizer, store, cfg, torch.device("cpu"))
    sampler = TrainSampler(store, cfg.train.batch, config.max_seq, cfg.data.val_fraction, 0)
    return stage, sampler, cfg.train


@pytest.mark.parametrize("make_stage", [world_stage, latent_stage], ids=["world", "latent"])
def test_a_training_step_reads_nothing_back_and_the_window_reads_once(make_stage, tmp_path, monkeypatch):
    stage, sampler, train = make_stage(tmp_path)
    optimizer = build_optimizer(stage.model, train, stage.lr_scales, stage.loss)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train))
    before = {name: p.detach().clone() for name, p in stage.model.named_parameters()}
    window = MetricWindow(first_step=0)
    batches = [sampler.next_batch() for _ in range(3)]

    def three_steps() -> None:
        for step, batch in enumerate(batches):
            window.add(train_step(stage, optimizer, scheduler, train, batch, step), batch.real_tokens)

    reads, _ = count_host_reads(monkeypatch, three_steps)
    assert reads == [], f"the step read values off tensors: {reads}"
    # It did train: the weights moved, and the step's metrics are tensors where they were computed.
    assert any(not torch.equal(before[name], p) for name, p in stage.model.named_parameters())
    assert window.steps == 3 and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in window.sums.values())

    reads, sums = count_host_reads(monkeypatch, window.read)
    assert reads == ["tolist"], reads  # every metric of the window in one transfer
    assert {"loss", "grad_norm"} <= set(sums) and all(np.isfinite(v) for v in sums.values())
    reads, _ = count_host_reads(monkeypatch, window.check_finite)
    assert reads == ["__float__"], reads  # the loss sum alone (and the counting sees such a read)
    assert window.tokens == sum(b.real_tokens for b in batches)


def test_a_non_finite_loss_stops_the_run_naming_the_steps():
    window = MetricWindow(first_step=20)
    for loss in (1.0, float("nan"), 2.0):
        window.add({"loss": torch.tensor(loss), "grad_norm": torch.tensor(0.5)}, tokens=10)
    with pytest.raises(TextJepaError, match=r"loss became nan between steps 21 and 23; lower --lr"):
        window.check_finite()
    sums = window.read()
    assert sums["grad_norm"] == pytest.approx(1.5) and np.isnan(sums["loss"])
    with pytest.raises(TextJepaError, match="lower --lr"):
        window.raise_if_not_finite(sums["loss"])
    one = MetricWindow(first_step=4)
    one.add({"loss": torch.tensor(float("inf"))}, tokens=1)
    with pytest.raises(TextJepaError, match="loss became inf at step 5"):
        one.check_finite()


def test_world_batches_reach_the_device_unchanged(tmp_path):
    stage, sampler, _ = world_stage(tmp_path)
    batch = sampler.next_batch()
    tensors = batch_tensors(batch, stage.mapping, torch.device("cpu"))
    assert np.array_equal(tensors["ids"].numpy(), batch.ids["context"])
    assert np.array_equal(tensors["next_valid"].numpy(), batch.valid["next"])
    assert tensors["actions"].dtype == torch.long and len(tensors["actions"]) == len(batch.index)
