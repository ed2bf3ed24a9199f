"""The data contract: one rule turns a record into model input in training, evaluation, the agent and the
bridge (a context keeps its last max_seq tokens, a reply its first), recorded in every checkpoint."""

import json

import numpy as np
import pytest
import torch
from conftest import synthetic_lines
from safetensors.torch import save_file

from textjepa.bridge.data import read_pairs, reply_latents
from textjepa.checkpoint import load_checkpoint, save_checkpoint
from textjepa.config import DataConfig, ModelConfig
from textjepa.data.batches import TrainSampler, iter_split_batches
from textjepa.data.contract import DataContract, Field, encode_rows, keep_tokens, pad_rows
from textjepa.data.sources import WORLD_RECORDS, load_corpus
from textjepa.data.tokens import MAX_STORED_TOKENS, train_tokenizer
from textjepa.inference.world import WorldInference, load_world
from textjepa.io import RunFiles, RunKind
from textjepa.models.heads import LatentModel, WorldModel

# One xdist group (scripts/test.sh: --dist loadgroup): the module-scoped checkpoint is built once.
pytestmark = pytest.mark.xdist_group("test_contract")
MAX_SEQ = 16


def numbered(prefix: str, count: int) -> str:
    """A text whose every stretch of tokens is distinct, so a wrong end cannot match by accident."""
    return " ".join(f"{prefix}{i}" for i in range(count))


@pytest.fixture(scope="module")
def long_pair(tmp_path_factory):
    """One world checkpoint (random weights, real tokenizer) and a pair file with one long context and reply."""
    root = tmp_path_factory.mktemp("contract")
    tokenizer = train_tokenizer(synthetic_lines(300) + [numbered("turn", 50), numbered("word", 50)], 400)
    context = "User: " + numbered("turn", 120)  # hundreds of tokens: the latest turns are at the end
    reply = numbered("word", 90)
    pairs = root / "pairs.txt"
    pairs.write_text(f"{context}\t{reply}\n")
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), dim=32, layers=1, heads=2, max_seq=MAX_SEQ)
    contract = DataContract(
        max_seq=MAX_SEQ, min_tokens=1, max_line_bytes=1_000_000, val_fraction=0.0, seed=0, source=str(pairs)
    )
    torch.manual_seed(0)
    world = WorldModel(config)
    files = RunFiles.create(root / "run", RunKind.WORLD, "tiny")
    files.model.parent.mkdir()
    teacher = {f"encoder.{k}": v for k, v in world.encoder.state_dict().items()}
    for path, role, tensors in ((files.model, "online", world.state_dict()), (files.teacher, "teacher", teacher)):
        save_checkpoint(path, RunKind.WORLD, role, config, tensors, tokenizer, {"step": 1}, contract)
    ids = {"context": tokenizer.encode(context, add_special_tokens=False).ids}
    ids["reply"] = tokenizer.encode(reply, add_special_tokens=False).ids
    assert len(ids["context"]) > 4 * MAX_SEQ and len(ids["reply"]) > 2 * MAX_SEQ
    return {"root": root, "pairs": pairs, "model": files.model, "context": context, "reply": reply, "ids": ids}


def training_batch(long_pair):
    """The pair as the training loop sees it: line file -> token store -> the training sampler's batch."""
    checkpoint = load_checkpoint(long_pair["model"])
    data = checkpoint.data.data_config(str(long_pair["pairs"]), str(long_pair["root"] / "cache"))
    _, store = load_corpus(long_pair["pairs"], WORLD_RECORDS, data, checkpoint.tokenizer, checkpoint.config.vocab_size)
    sampler = TrainSampler(store, 2, checkpoint.config.max_seq, data.val_fraction, checkpoint.data.seed)
    return store, sampler.next_batch()


def test_a_long_context_gives_the_same_tokens_in_training_and_in_the_agent(long_pair):
    _, batch = training_batch(long_pair)
    trained_context = batch.ids["context"][0][batch.valid["context"][0]].tolist()
    trained_reply = batch.ids["next"][0][batch.valid["next"][0]].tolist()

    checkpoint, world, teacher = load_world(long_pair["model"], torch.device("cpu"))
    inference = WorldInference(checkpoint, world, teacher, torch.device("cpu"))
    served = inference.context_encoder.tokenize([long_pair["context"]])
    served_context = served.ids[0][served.valid[0]].tolist()

    # The latest turns, in both paths: a model is served what it was trained on.
    assert trained_context == served_context == long_pair["ids"]["context"][-MAX_SEQ:]
    assert trained_reply == long_pair["ids"]["reply"][:MAX_SEQ]
    assert served.truncated == [True] and served.kept_counts == [MAX_SEQ]
    assert served.token_counts == [len(long_pair["ids"]["context"])]
    notes = inference.prepare([{"role": "user", "content": long_pair["context"]}])[3]
    assert any(f"last {MAX_SEQ} tokens" in note for note in notes)


def test_evaluation_and_the_bridge_read_records_by_the_same_rule(long_pair):
    store, batch = training_batch(long_pair)
    checkpoint, world, teacher = load_world(long_pair["model"], torch.device("cpu"))
    [evaluated] = list(iter_split_batches(store, 1, MAX_SEQ, "all", 0.0, 0))
    for name in ("context", "next"):
        assert np.array_equal(evaluated.ids[name][0], batch.ids[name][0])
    # The bridge's oracle latent is the teacher's latent of the reply exactly as the world model was trained.
    pairs, _ = read_pairs(long_pair["pairs"], checkpoint)
    oracle = reply_latents(WorldInference(checkpoint, world, teacher, torch.device("cpu")), [pairs[0].reply])
    ids, valid = torch.from_numpy(batch.ids["next"][:1]), torch.from_numpy(batch.valid["next"][:1])
    with torch.no_grad():
        expected = (teacher(ids, valid) * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
    assert torch.allclose(oracle, expected, atol=1e-6)


def test_the_token_store_keeps_the_end_of_a_context_longer_than_it_stores(tmp_path):
    tokenizer = train_tokenizer(synthetic_lines(200) + [numbered("t", 50)], 300)
    context = numbered("t", 1500)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{context}\t{numbered('t', 1500)}\n")
    full = tokenizer.encode(context, add_special_tokens=False).ids
    assert len(full) > MAX_STORED_TOKENS
    data = DataConfig(path=str(pairs), data_dir=str(tmp_path / "cache"), min_tokens=1)
    _, store = load_corpus(pairs, WORLD_RECORDS, data, tokenizer, 300)
    assert store.fields["context"].record(0).tolist() == full[-MAX_STORED_TOKENS:]
    assert store.fields["next"].record(0).tolist() == full[:MAX_STORED_TOKENS]


def test_rows_are_cut_by_their_role_and_padded():
    row = list(range(1, 11))
    assert keep_tokens(row, Field.CONTEXT, 4) == [7, 8, 9, 10]
    assert keep_tokens(row, Field.REPLY, 4) == [1, 2, 3, 4]
    assert keep_tokens(row, Field.TEXT, 4) == [1, 2, 3, 4]
    assert keep_tokens(np.asarray(row), Field.CONTEXT, 20).tolist() == row
    ids, valid = pad_rows([row, [5, 6]], Field.CONTEXT, 4)
    assert ids.tolist() == [[7, 8, 9, 10], [5, 6, 0, 0]] and valid.sum(1).tolist() == [4, 2]
    tokenizer = train_tokenizer(synthetic_lines(100), 300)
    encoded = encode_rows(tokenizer, ["the fox", numbered("w", 40)], Field.CONTEXT, 8)
    assert encoded.ids.shape == (2, 8) and encoded.truncated == [False, True] and encoded.kept_counts[1] == 8


def _write_old_checkpoint(path, kind: str, info: dict, tokenizer, config: ModelConfig) -> None:
    """A checkpoint as earlier versions wrote it: the data settings as an untyped info["data"] dict."""
    from textjepa.data.tokens import tokenizer_hash

    metadata = {
        "format": "textjepa",
        "kind": kind,
        "role": "online",
        "config": json.dumps(config.to_dict()),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "tokenizer": tokenizer.to_str(),
        "info": json.dumps(info),
    }
    # The tensors of the model the config describes (loading checks them against it).
    model = (WorldModel if kind == "world" else LatentModel)(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)


def test_old_checkpoints_with_an_untyped_data_dict_still_load(tmp_path):
    tokenizer = train_tokenizer(synthetic_lines(100), 300)
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), dim=32, layers=1, heads=2, max_seq=24)
    recorded = {
        "path": "data/pairs.txt",
        "corpus_hash": "abc",
        "val_fraction": 0.2,
        "seed": 7,
        "min_tokens": 3,
        "max_line_bytes": 5000,
    }
    _write_old_checkpoint(tmp_path / "full.safetensors", "world", {"step": 5, "data": recorded}, tokenizer, config)
    checkpoint = load_checkpoint(tmp_path / "full.safetensors")
    assert checkpoint.kind is RunKind.WORLD and checkpoint.info == {"step": 5}
    assert checkpoint.data == DataContract(24, 3, 5000, 0.2, 7, "data/pairs.txt", "abc")
    assert checkpoint.data.to_info() == recorded

    # Settings an older checkpoint did not record are the training defaults of its kind.
    for kind, min_tokens in (("world", 1), ("latent", 2)):
        _write_old_checkpoint(tmp_path / f"{kind}.safetensors", kind, {"step": 5}, tokenizer, config)
        data = load_checkpoint(tmp_path / f"{kind}.safetensors").data
        assert (data.min_tokens, data.val_fraction, data.seed, data.source) == (min_tokens, 0.05, 0, "")


def test_the_contract_is_saved_and_read_in_one_place(tmp_path):
    tokenizer = train_tokenizer(synthetic_lines(100), 300)
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), dim=32, layers=1, heads=2, max_seq=24)
    contract = DataContract(24, 2, 999, 0.1, 3, "x.txt", "hash")
    path = tmp_path / "m.safetensors"
    # A stale untyped dict in info never wins over the contract.
    tensors = LatentModel(config).state_dict()
    save_checkpoint(path, RunKind.LATENT, "online", config, tensors, tokenizer, {"data": {"seed": 99}}, contract)
    loaded = load_checkpoint(path)
    assert loaded.data == contract and "data" not in loaded.info
