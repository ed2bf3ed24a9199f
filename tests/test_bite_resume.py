"""A resume puts back the data position and every random stream: after restoring a training state, the next
batches, the next random draws and the weights they train to equal those of the run that was never stopped.

In process, with the loop's own parts (the latent stage, its sampler, optimizer and schedule, train_step, the
training state written to disk and read back, and `restore`, which run_training calls to resume), so that this does
not rest on the slow kill -9 test of the whole command."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import synthetic_lines

from textjepa.checkpoint import load_training_state, save_training_state
from textjepa.config import DataConfig, LatentConfig, ModelConfig, TrainConfig
from textjepa.data.batches import TrainSampler
from textjepa.data.sources import LATENT_RECORDS, load_corpus
from textjepa.runtime import Distributed, seed_everything
from textjepa.train.latent import LatentStage
from textjepa.train.loop import train_step
from textjepa.train.resume import rank_state, restore, training_state

STOP_AT, MORE = 3, 3  # steps before the stop, and after it


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bite-resume")
    path = root / "corpus.txt"
    path.write_text("\n".join(synthetic_lines(300)) + "\n")
    return path


def fresh_run(corpus):
    """A run as `textjepa latent` sets one up: (stage, sampler, optimizer, scheduler, train settings)."""
    data = DataConfig(path=str(corpus), data_dir=str(corpus.parent / "cache"), val_fraction=0.1)
    train = TrainConfig(steps=STOP_AT + MORE, batch=8, seed=3, device="cpu", progress=False)
    cfg = LatentConfig(data=data, model=ModelConfig(dim=32, layers=1, heads=2, max_seq=32, vocab_size=300), train=train)
    tokenizer, store = load_corpus(corpus, LATENT_RECORDS, cfg.data, None, cfg.model.vocab_size)
    config = dataclasses.replace(cfg.model, vocab_size=tokenizer.get_vocab_size())
    seed_everything(train.seed)
    stage = LatentStage(config, tokenizer, store, cfg, torch.device("cpu"))
    sampler = TrainSampler(store, train.batch, config.max_seq, data.val_fraction, train.seed)
    optimizer = stage.build_optimizer(train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, stage.schedule(train))
    return stage, sampler, optimizer, scheduler, train


def continue_run(run, start: int) -> dict:
    """MORE steps from `start`; what they drew: the batches' records, then the next random numbers of the torch
    RNG and of the stage's generators, and the weights."""
    stage, sampler, optimizer, scheduler, train = run
    records = []
    for step in range(start, start + MORE):
        batch = sampler.next_batch()
        records.append(batch.index.tolist())
        train_step(stage, optimizer, scheduler, train, batch, step)
    return {
        "records": records,
        "torch_rng": torch.rand(8),
        "generators": {name: torch.rand(8, generator=g) for name, g in stage.generators.items()},
        "weights": {k: v.clone() for k, v in stage.model.state_dict().items()},
        "teacher": {k: v.clone() for k, v in stage.teacher.state_dict().items()},
    }


def test_a_resumed_run_draws_what_the_uninterrupted_one_draws(corpus, tmp_path):
    whole = fresh_run(corpus)
    stage, sampler, optimizer, scheduler, train = whole
    for step in range(STOP_AT):
        train_step(stage, optimizer, scheduler, train, sampler.next_batch(), step)
    state_path = tmp_path / "model_latent_tiny.state.pt"
    dist = Distributed()
    save_training_state(
        state_path, training_state(stage, optimizer, scheduler, STOP_AT, "run", dist, [rank_state(sampler, stage)])
    )
    expected = continue_run(whole, STOP_AT)

    resumed = fresh_run(corpus)
    # A new process's streams are elsewhere: at the start of the data, with other numbers drawn already.
    torch.rand(5)
    for generator in resumed[0].generators.values():
        torch.rand(5, generator=generator)
    assert resumed[1].next_batch().index.tolist() != expected["records"][0]
    stage, sampler, optimizer, scheduler, _ = resumed
    step = restore(load_training_state(state_path), state_path, stage, optimizer, scheduler, sampler, dist)
    assert step == STOP_AT
    got = continue_run(resumed, step)

    assert got["records"] == expected["records"]  # the data position
    assert torch.equal(got["torch_rng"], expected["torch_rng"])
    assert set(got["generators"]) == set(expected["generators"]) == {"model.generator"}
    for name, draws in expected["generators"].items():
        assert torch.equal(got["generators"][name], draws), name
    for part in ("weights", "teacher"):
        for name, tensor in expected[part].items():
            assert torch.equal(got[part][name], tensor), f"{part}.{name}"


def test_the_sampler_state_is_the_data_position(corpus):
    """The sampler alone: its saved state continues its stream; a fresh sampler starts elsewhere."""
    _, sampler, *_ = fresh_run(corpus)
    for _ in range(4):
        sampler.next_batch()
    saved = sampler.state_dict()
    expected = [sampler.next_batch().index.tolist() for _ in range(20)]  # past the pending pool
    _, other, *_ = fresh_run(corpus)
    other.load_state_dict(saved)
    assert [other.next_batch().index.tolist() for _ in range(20)] == expected
    _, fresh, *_ = fresh_run(corpus)
    assert not np.array_equal(fresh.next_batch().index, expected[0])
