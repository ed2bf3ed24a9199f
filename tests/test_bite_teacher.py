"""The one loader of a checkpoint's EMA teacher refuses a teacher that differs from its checkpoint in any one of
role, shape, tokenizer, step or run, each alone (the same step of another run included), and loads the right one."""

import dataclasses

import pytest
from conftest import synthetic_lines

from textjepa.checkpoint import load_with_teacher, save_checkpoint
from textjepa.config import ModelConfig
from textjepa.data.tokens import train_tokenizer
from textjepa.errors import TextJepaError
from textjepa.io import RunFiles, RunKind
from textjepa.models.heads import LatentModel

INFO = {"step": 4, "run_id": "20250101-000000-aaaa"}


@pytest.fixture
def run(tmp_path):
    tokenizer = train_tokenizer(synthetic_lines(100), 300)
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), dim=32, layers=1, heads=2, max_seq=16)
    files = RunFiles.create(tmp_path, RunKind.LATENT, "tiny")
    model = LatentModel(config)
    save_checkpoint(files.model, RunKind.LATENT, "online", config, model.state_dict(), tokenizer, INFO)
    return files, config, tokenizer, model


def save_teacher(run, role="teacher", config=None, tokenizer=None, info=INFO, tensors=None) -> None:
    files, run_config, run_tokenizer, model = run
    if tensors is None:
        tensors = (
            model.state_dict()
            if role == "online"
            else {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
        )
    save_checkpoint(
        files.teacher, RunKind.LATENT, role, config or run_config, tensors, tokenizer or run_tokenizer, info
    )


def test_the_teacher_of_the_same_run_and_step_loads(run):
    save_teacher(run)
    online, teacher = load_with_teacher(run[0].model, RunKind.LATENT)
    assert teacher.info["run_id"] == online.info["run_id"] and teacher.info["step"] == online.info["step"] == 4


def other_tokenizer(run):
    tokenizer = train_tokenizer(synthetic_lines(100, seed=7), 300)
    assert tokenizer.get_vocab_size() == run[1].vocab_size  # same shapes: only the tokenizer differs
    return tokenizer


DIFFERENCES = {
    "another run at the same step": lambda run: {"info": {**INFO, "run_id": "20250101-000000-bbbb"}},
    "no run id at the same step": lambda run: {"info": {"step": 4}},
    "the same run at another step": lambda run: {"info": {**INFO, "step": 5}},
    "the online role": lambda run: {"role": "online"},
    "another shape setting": lambda run: {"config": dataclasses.replace(run[1], heads=4)},
    "another tokenizer of the same size": lambda run: {"tokenizer": other_tokenizer(run)},
}


@pytest.mark.parametrize("difference", DIFFERENCES)
def test_a_teacher_that_differs_in_one_thing_is_refused(run, difference):
    save_teacher(run, **DIFFERENCES[difference](run))
    with pytest.raises(TextJepaError, match="is not the teacher of .* must come from the same run"):
        load_with_teacher(run[0].model)


def test_a_teacher_without_tensors_is_the_online_encoder_only_for_a_frozen_backbone(run):
    """A frozen backbone is its own teacher: its teacher file holds no tensors and points at the model file's
    encoder. Beside a model that was trained with an EMA teacher, such a file is refused, never read as the online
    encoder."""
    save_teacher(run, tensors={})
    with pytest.raises(TextJepaError, match="trained with an EMA teacher"):
        load_with_teacher(run[0].model, RunKind.LATENT)
    files, config, tokenizer, model = run
    frozen = {**INFO, "backbone_mode": "frozen"}
    save_checkpoint(files.model, RunKind.LATENT, "online", config, model.state_dict(), tokenizer, frozen)
    save_teacher(run, tensors={}, info=frozen)
    online, teacher = load_with_teacher(files.model, RunKind.LATENT)
    assert teacher.encoder_in_online and set(teacher.tensors) == {k for k in online.tensors if k.startswith("encoder.")}
