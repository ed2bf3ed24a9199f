"""train-world --target-model: the next turn predicted in a frozen sentence-transformers space, end to end.

The frozen model is a real sentence-transformers model built here (a one-layer BERT of width 32 with a WordPiece
vocabulary trained by `tokenizers`, mean pooling), saved to a folder exactly as a downloaded model is: no network,
and seconds instead of the half minute all-MiniLM-L6-v2 takes to load on a busy CPU.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TARGET_WIDTH as WIDTH
from conftest import assert_user_error, build_sentence_transformer, run_cli, train_world_on
from safetensors import safe_open

from textjepa.api import WorldModel
from textjepa.checkpoint import load_checkpoint
from textjepa.config import WorldConfig
from textjepa.data.sources import WORLD_RECORDS, load_corpus, recorded_data
from textjepa.io import write_safetensors
from textjepa.models.frozen import TARGET_MODEL_INFO, FrozenEmbedder, record_targets, targets_path

# One worker runs this module, so its module-scoped fixtures (trained world models) are built once per run,
# not once per worker.
pytestmark = pytest.mark.xdist_group("test_frozen_target")


@pytest.fixture(scope="module")
def target_model(tmp_path_factory) -> Path:
    return build_sentence_transformer(tmp_path_factory.mktemp("frozen-target"))


@pytest.fixture(scope="module")
def frozen_world(tiny_world_base, target_model, tmp_path_factory) -> dict:
    """A tiny world model trained in the frozen space, and the same run stopped after one step at a negligible
    learning rate (its untrained prediction), both from the session's tiny JEPA encoder."""
    root = tmp_path_factory.mktemp("frozen-world")
    trained = train_world_on(
        tiny_world_base, tiny_world_base["latent"], root / "trained", "--target-model", target_model
    )
    untrained = train_world_on(
        tiny_world_base, tiny_world_base["latent"], root / "untrained",
        "--target-model", target_model, "--steps", "1", "--lr", "1e-12", "--eval-every", "1",
    )  # fmt: skip
    return {**trained, "untrained": untrained["world"], "target_model": target_model}


def eval_world(checkpoint: Path, data: dict, json_path: Path) -> dict:
    result = run_cli("eval-world", checkpoint, "--batch", "16", "--data-dir", data["cache"], "--json", json_path)
    assert result.returncode == 0, result.stderr
    return {"stdout": result.stdout, **json.loads(json_path.read_text())}


def test_targets_are_the_frozen_models_embeddings_and_are_cached(tiny_world_base, target_model):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(target_model), device="cpu")
    embedder = FrozenEmbedder(str(target_model))
    texts = ["rain falls from grey clouds", "the function returns a sorted list of unique keys", "x"]
    expected = reference.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert embedder.dim == WIDTH
    assert np.allclose(embedder.encode(texts).numpy(), expected, atol=1e-5)

    # Every record's next turn, in store order: the pair file's replies (no line is skipped in these pairs).
    latent = load_checkpoint(tiny_world_base["latent"])
    cfg = WorldConfig()
    cfg.data.data_dir = str(tiny_world_base["root"] / "targets-cache")
    _, store = load_corpus(Path(tiny_world_base["pairs"]), WORLD_RECORDS, cfg.data, latent.tokenizer, 300)
    replies = [
        line.replace("|||", "\t").split("\t")[1] for line in Path(tiny_world_base["pairs"]).read_text().splitlines()
    ]
    assert len(store) == len(replies)
    targets = record_targets(embedder, store, latent.tokenizer)
    assert targets.shape == (len(replies), WIDTH)
    assert np.allclose(targets.numpy(), reference.encode(replies, normalize_embeddings=True), atol=1e-5)
    cache = targets_path(store, embedder, "next")
    assert cache.is_file() and cache.parent == store.path.parent
    # A rerun reads the cache: what is in the file is what comes back (shown by changing the file).
    with safe_open(str(cache), framework="pt") as handle:
        metadata = handle.metadata()
    write_safetensors(cache, {"embeddings": torch.zeros_like(targets)}, metadata)
    assert torch.count_nonzero(record_targets(embedder, store, latent.tokenizer)) == 0
    # One of another model (its digest) is never taken for this one's: recomputed.
    write_safetensors(cache, {"embeddings": torch.zeros_like(targets)}, {**metadata, "model_sha256": "other"})
    assert torch.allclose(record_targets(embedder, store, latent.tokenizer), targets)


def test_world_model_learns_in_the_frozen_space(frozen_world, tmp_path):
    trained = eval_world(frozen_world["world"], frozen_world, tmp_path / "trained.json")
    untrained = eval_world(frozen_world["untrained"], frozen_world, tmp_path / "untrained.json")
    # Held-out (validation split) next-turn retrieval among the frozen model's embeddings of the candidates.
    assert trained["world_model"]["R@1"] > untrained["world_model"]["R@1"] + 0.2, (trained, untrained)
    assert trained["target_model"] == str(frozen_world["target_model"])
    # "copy the context" in the frozen space is the frozen model's own zero-shot retrieval, labelled so; it does
    # not depend on our model (the same for both checkpoints).
    assert "zero-shot" in trained["stdout"] and trained["baseline_copy"] == untrained["baseline_copy"]


def test_checkpoint_records_the_target_model_and_the_api_uses_its_space(frozen_world):
    with safe_open(str(frozen_world["world"]), "pt") as handle:
        info = json.loads(handle.metadata()["info"])
        config = json.loads(handle.metadata()["config"])
        keys = set(handle.keys())
    assert info[TARGET_MODEL_INFO]["name"] == str(frozen_world["target_model"])
    assert info[TARGET_MODEL_INFO]["dim"] == WIDTH and config["target_dim"] == WIDTH
    assert {"target_head.weight", "target_head.bias"} <= keys

    model = WorldModel.load(frozen_world["world"], "cpu", precision="fp32")
    assert model.target_model == str(frozen_world["target_model"])
    replies = ["rain falls from grey clouds", "boil the pasta in salted water"]
    reference = FrozenEmbedder(str(frozen_world["target_model"])).encode(replies).numpy()
    assert np.allclose(model.encode(replies, kind="reply"), reference, atol=1e-5)
    predicted = model.predict_next(["User: tell me about weather please number 3"])
    assert predicted.shape == (1, WIDTH) and model.encode(["User: hi"]).shape == (1, model.dim)
    # The retrieval index holds the training replies' frozen embeddings: the index row of a reply is its embedding.
    index = model.core.retrieval_index()
    row = index.replies.index(index.nearest(torch.from_numpy(predicted[0]), 1)[0][0])
    assert np.allclose(index.latents[row].numpy(), model.encode([index.replies[row]], kind="reply")[0], atol=1e-5)
    nearest = model.nearest_replies("User: tell me about weather please number 3", k=3)
    assert len(nearest) == 3


def test_infer_and_its_ablation_work_on_a_frozen_space_checkpoint(frozen_world):
    result = run_cli("infer", frozen_world["world"], "tell me about cooking please", "--json", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    replies = frozen_world["world"].parent / frozen_world["world"].name.replace(".safetensors", ".replies.txt")
    assert answer["output"] in replies.read_text().splitlines() and len(answer["alternatives"]) == 2
    ablated = run_cli("infer", frozen_world["world"], "tell me about cooking please", "--ablate-conditioning")
    assert ablated.returncode == 0 and "falls back to the context latent" in ablated.stdout, ablated.stderr


def test_a_missing_target_model_is_one_line_naming_it(frozen_world, tmp_path):
    missing = tmp_path / "no-such-model"
    result = run_cli(
        "train-world", frozen_world["pairs"], "--init-encoder", frozen_world["latent"], "--steps", "2",
        "--out-dir", tmp_path / "run", "--data-dir", frozen_world["cache"], "--target-model", missing,
    )  # fmt: skip
    assert_user_error(result, "target model", str(missing))
    # A checkpoint whose target model has gone: eval-world (which embeds the candidates) names it.
    moved_model = tmp_path / "model-copy"
    shutil.copytree(frozen_world["target_model"], moved_model)
    world = train_world_on(
        frozen_world, frozen_world["latent"], tmp_path / "world", "--target-model", moved_model, "--steps", "2"
    )
    shutil.rmtree(moved_model)
    assert_user_error(
        run_cli("eval-world", world["world"], "--data-dir", frozen_world["cache"]), "target model", str(moved_model)
    )
    # Continuing a frozen-space checkpoint in another space is refused before any work.
    assert_user_error(
        run_cli(
            "train-world",
            frozen_world["pairs"],
            "--init-encoder",
            frozen_world["world"],
            "--steps",
            "2",
            "--out-dir",
            tmp_path / "continued",
            "--data-dir",
            frozen_world["cache"],
        ),  # fmt: skip
        "--target-model",
    )


def test_the_option_is_off_by_default(tiny_world):
    assert WorldConfig().target_model == ""
    with safe_open(str(tiny_world["world"]), "pt") as handle:
        info = json.loads(handle.metadata()["info"])
        assert TARGET_MODEL_INFO not in info
        assert not any(key.startswith("target_head.") for key in handle.keys())
    model = WorldModel.load(tiny_world["world"], "cpu", precision="fp32")
    assert model.target_model == "" and model.predicted_dim == model.dim
    assert "--target-model" in run_cli("train-world", "--help").stdout


def test_recorded_data_reads_the_same_store(frozen_world):
    """eval-world embeds the candidates of the checkpoint's own store: the training-time cache is reused."""
    model = WorldModel.load(frozen_world["world"], "cpu", precision="fp32")
    checkpoint = model.checkpoint
    path, data = recorded_data(None, checkpoint.data, checkpoint.kind, str(frozen_world["cache"]))
    _, store = load_corpus(path, WORLD_RECORDS, data, checkpoint.tokenizer, checkpoint.config.vocab_size)
    assert targets_path(store, model.core.target_embedder(), "next").is_file()
