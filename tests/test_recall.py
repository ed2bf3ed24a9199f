"""The retrieval decoder's recall: a prompt nearly the same as a training context gets the replies that followed it
first (textjepa/decoders/retrieval.py), on real indexes: one written by hand, one by train-world."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_user_error, run_cli
from safetensors import safe_open

from textjepa.decoders.base import Conditioning
from textjepa.decoders.retrieval import RECALL_THRESHOLD, RetrievalDecoder, RetrievalIndex
from textjepa.errors import TextJepaError
from textjepa.io import RunFiles, write_safetensors


def unit(*values: float) -> torch.Tensor:
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=-1)


def small_index() -> RetrievalIndex:
    """Three replies; the first two followed one training context each, "c" none."""
    latents = torch.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)])
    contexts = torch.stack([unit(1, 1, 0), unit(1, -1, 0)])
    return RetrievalIndex(latents, torch.zeros(3), ["a", "b", "c"], contexts, torch.tensor([0, 1]))


def conditioned(predicted: torch.Tensor, state: torch.Tensor) -> Conditioning:
    return Conditioning(predicted=predicted, state=state, vector=torch.zeros(2))


def test_a_recalled_reply_comes_before_a_nearer_prediction():
    index = small_index()
    predicted = unit(0, 0.2, 1)  # nearest "c", then "b", then "a"
    # The state is the first training context itself: its reply "a" comes first, the rest by the prediction.
    ranked, recall = index.answer(predicted, unit(1, 1, 0), 3)
    assert [text for text, _ in ranked] == ["a", "c", "b"] and recall == pytest.approx(1.0)
    # The listed scores stay the prediction's cosines.
    assert [score for _, score in ranked] == pytest.approx([0.0, float(predicted[2]), float(predicted[1])])
    # A state just below the threshold recalls nothing: the order is the prediction's.
    angle = float(np.arccos(RECALL_THRESHOLD)) + 0.01
    below = torch.tensor([np.cos(np.pi / 4 - angle), np.sin(np.pi / 4 - angle), 0.0], dtype=torch.float32)
    ranked, recall = index.answer(predicted, below, 3)
    assert [text for text, _ in ranked] == ["c", "b", "a"] and recall == 0
    assert [text for text, _ in ranked] == [text for text, _ in index.nearest(predicted, 3)]


def test_the_decoder_says_when_it_recalled_and_can_be_told_not_to():
    decoder = RetrievalDecoder(small_index())
    predicted, state = unit(0, 0.2, 1), unit(1, -1, 0)
    recalled = decoder.generate([], conditioned(predicted, state))
    assert recalled.text == "b" and any("recalled: a training context at cosine 1.000" in n for n in recalled.notes)
    plain = decoder.generate([], conditioned(predicted, state), recall=False)
    assert plain.text == "c" and plain.notes == []
    assert RetrievalDecoder(small_index(), recall=False).generate([], conditioned(predicted, state)).text == "c"


def test_an_index_without_contexts_answers_from_the_prediction(tmp_path):
    index = small_index()
    bare = RetrievalIndex(index.latents, index.mean_next_latent, index.replies)
    ranked, recall = bare.answer(unit(0, 0.2, 1), unit(1, 1, 0), 2)
    assert [text for text, _ in ranked] == ["c", "b"] and recall == 0


def copy_index(world, tmp_path, **replace: torch.Tensor | None):
    """The tiny world model's files copied into tmp_path, its index's tensors replaced (None: left out)."""
    import shutil

    files = RunFiles(world)
    for path in (world, files.index, files.replies, world.with_name(world.stem + "_teacher.safetensors")):
        shutil.copy(path, tmp_path / path.name)
    index_file = tmp_path / files.index.name
    with safe_open(str(files.index), "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = handle.metadata()
    for name, tensor in replace.items():
        tensors.pop(name)
        if tensor is not None:
            tensors[name] = tensor
    write_safetensors(index_file, tensors, metadata)
    return tmp_path / world.name


def test_train_world_indexes_every_training_context_with_its_reply(frozen_mean_world, tmp_path):
    from textjepa.inference.world import WorldInference

    world = frozen_mean_world["world"]
    index = RetrievalIndex.load(world)
    model = WorldInference.load(world, "cpu", precision="fp32")
    lines = [line for line in frozen_mean_world["pairs"].read_text().splitlines() if line.strip()]
    pairs = [line.split("\t") if "\t" in line else line.split("|||") for line in lines]
    training = np.flatnonzero(~model.checkpoint.data.is_validation(np.arange(len(pairs))))
    assert index.context_states is not None and len(index.context_states) == len(training)
    # Each training context's state, as the decoder's conditioning gives it, is in the index, beside its reply.
    contexts = [pairs[i][0] for i in training[:8]]
    conditionings, _ = model.condition(contexts)
    for record, conditioning in zip(training[:8], conditionings):
        similarity = index.context_states @ F.normalize(conditioning.state, dim=-1)
        row = int(similarity.argmax())
        assert float(similarity[row]) == pytest.approx(1.0, abs=1e-4)
        assert index.replies[int(index.context_replies[row])] == pairs[record][1]
    # An index written before recall (no context table) still loads; a broken table is refused.
    old = copy_index(world, tmp_path, context_states=None, context_replies=None)
    assert RetrievalIndex.load(old).context_states is None
    (tmp_path / "broken").mkdir()
    broken = copy_index(
        world, tmp_path / "broken", context_replies=torch.full((len(training),), len(index.replies), dtype=torch.long)
    )
    with pytest.raises(TextJepaError, match="broken context table"):
        RetrievalIndex.load(broken)


def test_infer_recalls_a_training_question_and_no_recall_turns_it_off(frozen_mean_world):
    from textjepa.inference.world import WorldInference

    world = frozen_mean_world["world"]
    index = RetrievalIndex.load(world)
    model = WorldInference.load(world, "cpu", precision="fp32")
    lines = [line for line in frozen_mean_world["pairs"].read_text().splitlines() if line.strip()]
    training = ~model.checkpoint.data.is_validation(np.arange(len(lines)))
    # A training pair: "User: tell me about <topic> please number <i>" TAB six of the topic's words.
    question, reply = next(lines[i] for i in range(len(lines)) if training[i] and "\t" in lines[i]).split("\t")
    assert reply in index.replies
    recalled = json.loads(run_cli("infer", world, question.removeprefix("User: "), "--json", "--top-k", "3").stdout)
    assert any(note.startswith("recalled: a training context at cosine 1.000") for note in recalled["notes"])
    # The answer is one of the replies recalled: those of the training contexts this close to the prompt.
    [conditioning], _ = model.condition([question])
    recall = index.recalled(conditioning.state)
    assert recall[index.replies.index(reply)] == pytest.approx(1.0, abs=1e-4)
    assert recall[index.replies.index(recalled["output"])] >= RECALL_THRESHOLD
    plain = json.loads(
        run_cli("infer", world, question.removeprefix("User: "), "--json", "--top-k", "3", "--no-recall").stdout
    )
    assert not any(note.startswith("recalled") for note in plain["notes"])
    assert [a["text"] for a in plain["alternatives"]] == [t for t, _ in index.nearest(conditioning.predicted, 3)]
    assert_user_error(
        run_cli("infer", world, "hello", "--no-recall", "--decoder", "transformers"), "--no-recall", "retrieval"
    )
