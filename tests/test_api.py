"""The Python API (`from textjepa import WorldModel, Encoder`) and `textjepa embed`, on real tiny checkpoints.

The API's vectors must be the ones the agent, the server's model worker, `infer` and the data contract give;
`embed` must write them row by row, streaming.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import assert_user_error, cli_env, run_cli, synthetic_lines

from textjepa import Encoder, WorldModel
from textjepa.errors import TextJepaError

TEXTS = ["User: tell me about music please", "rain falls from grey clouds", "User: tell me about space please"]


@pytest.fixture(scope="module")
def trained(tiny_world) -> dict:
    return tiny_world


@pytest.fixture(scope="module")
def wm(trained) -> WorldModel:
    return WorldModel.load(trained["world"], device="cpu", precision="fp32")  # as FP32 pins the CLI below


# Results of the API are compared with the CLI's at 1e-5: both pinned to fp32 (`auto`, the default of both, is bf16
# on CPUs with native bf16 and fp32 elsewhere; test_the_api_default_precision_is_the_clis covers the default).
FP32 = ("--precision", "fp32")


def reference_latent(network: torch.nn.Module, ids: list[int]) -> np.ndarray:
    """The pooled latent of one row, computed straight from the torch module on exactly these tokens (no contract
    code): its own pooling, lexical for the default world model, the mean for a latent checkpoint."""
    with torch.no_grad():
        return network.pooled(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))[0].numpy()


# --- WorldModel / Encoder ------------------------------------------------------------------------------------


def test_import_textjepa_stays_cheap():
    code = "import sys, textjepa; assert 'torch' not in sys.modules; from textjepa import WorldModel; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_encode_equals_what_the_agent_and_the_server_compute(trained, wm):
    from textjepa.agent import Agent
    from textjepa.serve.worker import ModelWorker

    vectors = wm.encode(TEXTS)
    assert vectors.shape == (3, wm.dim) and vectors.dtype == np.float32
    agent = Agent.load(trained["world"], precision="fp32")
    np.testing.assert_allclose(vectors, agent.world.context_encoder.embed_texts(TEXTS, 32).vectors.numpy(), atol=1e-5)

    async def served() -> np.ndarray:
        worker = ModelWorker(agent.world, max_batch=2)  # the server's model thread, batches of 2
        worker.start()
        try:
            return (await worker.embed(TEXTS)).vectors.numpy()
        finally:
            worker.close()

    np.testing.assert_allclose(vectors, asyncio.run(served()), atol=1e-5)
    # Batching does not change a vector; normalize gives unit rows of the same direction.
    np.testing.assert_allclose(wm.encode(TEXTS, batch_size=1), vectors, atol=1e-5)
    unit = wm.encode(TEXTS, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), atol=1e-5)
    assert wm.encode("rain falls from grey clouds").shape == (1, wm.dim)
    assert wm.encode([]).shape == (0, wm.dim)


def test_encode_follows_the_data_contract(wm):
    """A long text: as a context its LAST max_seq tokens (the online encoder), as a reply its FIRST (the teacher)."""
    text = " ".join(synthetic_lines(12, seed=3))
    ids = wm.checkpoint.tokenizer.encode(text, add_special_tokens=False).ids
    limit = wm.config.max_seq
    assert len(ids) > 2 * limit
    as_context = reference_latent(wm.core.network.encoder, ids[-limit:])
    as_reply = reference_latent(wm.core.teacher_encoder.network, ids[:limit])
    np.testing.assert_allclose(wm.encode([text])[0], as_context, atol=1e-5)
    np.testing.assert_allclose(wm.encode([text], kind="reply")[0], as_reply, atol=1e-5)
    assert not np.allclose(as_context, reference_latent(wm.core.network.encoder, ids[:limit]), atol=1e-3)


def test_predict_next_is_the_agents_prediction(trained, wm):
    from textjepa.agent import Agent

    conditioning, _ = Agent.load(trained["world"], precision="fp32").world.condition(TEXTS)
    predicted = wm.predict_next(TEXTS)
    np.testing.assert_allclose(predicted, torch.stack([c.predicted for c in conditioning]).numpy(), atol=1e-5)
    np.testing.assert_allclose(wm.predict_next(TEXTS, batch_size=1), predicted, atol=1e-5)
    assert not np.allclose(predicted, wm.encode(TEXTS), atol=1e-3)  # the transition moves the state
    with pytest.raises(TextJepaError, match="unknown action"):
        wm.predict_next(TEXTS, action="shout")
    with pytest.raises(TextJepaError, match="kind"):
        wm.encode(TEXTS, kind="question")


def test_nearest_replies_and_reply_match_infer(trained, wm):
    prompt = "tell me about cooking please"
    result = run_cli("infer", trained["world"], prompt, "--json", "--top-k", "3", *FP32)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    nearest = wm.nearest_replies([{"role": "user", "content": prompt}], k=3)
    assert [text for text, _ in nearest] == [a["text"] for a in shown["alternatives"]]
    np.testing.assert_allclose([s for _, s in nearest], [a["score"] for a in shown["alternatives"]], atol=1e-5)
    # A context text in the training form is taken as written: the same conversation.
    assert wm.nearest_replies(f"User: {prompt}", k=3) == nearest
    assert wm.reply([{"role": "user", "content": prompt}]) == shown["output"] == nearest[0][0]
    assert wm.reply(prompt) == shown["output"]
    ablated = run_cli("infer", trained["world"], prompt, "--json", "--ablate-conditioning", *FP32)
    assert wm.reply(prompt, ablate=True) == json.loads(ablated.stdout)["output"]


def test_encoder_load(trained, wm):
    # A world checkpoint's encoder reads contexts (= WorldModel.encode); its teacher reads replies.
    context_encoder = Encoder.load(trained["world"], device="cpu", precision="fp32")
    np.testing.assert_allclose(context_encoder.encode(TEXTS), wm.encode(TEXTS), atol=1e-5)
    teacher = Encoder.load(trained["world"], teacher=True, precision="fp32")
    np.testing.assert_allclose(teacher.encode(TEXTS), wm.encode(TEXTS, kind="reply"), atol=1e-5)
    # A latent checkpoint's encoder reads plain text lines: a long line keeps its FIRST max_seq tokens.
    latent = Encoder.load(trained["latent"], precision="fp32")
    text = " ".join(synthetic_lines(12, seed=4))
    ids = latent.checkpoint.tokenizer.encode(text, add_special_tokens=False).ids
    assert len(ids) > latent.max_seq
    np.testing.assert_allclose(
        latent.encode([text])[0], reference_latent(latent.core.network, ids[: latent.max_seq]), atol=1e-5
    )
    with pytest.raises(TextJepaError, match="expected a world checkpoint"):
        WorldModel.load(trained["latent"])
    with pytest.raises(TextJepaError, match="not found"):
        Encoder.load(trained["root"] / "missing.safetensors")


# --- textjepa embed ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lines_file(tmp_path_factory) -> tuple[Path, list[str]]:
    """Good lines, a `left<TAB>right` line (its left side is embedded) and bad lines that are skipped."""
    good = synthetic_lines(150, seed=7)
    path = tmp_path_factory.mktemp("embed") / "to_embed.txt"
    with path.open("wb") as handle:
        for i, line in enumerate(good):
            handle.write(line.encode() + b"\n")
            if i == 10:
                handle.write(b"\n")  # empty
            if i == 20:
                handle.write(b"\xff\xfe broken\n")  # undecodable
    with path.open("ab") as handle:
        handle.write(b"left side of a pair\tright side\n")
    return path, good + ["left side of a pair"]


def test_embed_npy_round_trip(trained, wm, lines_file, tmp_path):
    path, texts = lines_file
    out = tmp_path / "vectors.npy"
    result = run_cli("embed", trained["world"], path, "--out", out, "--batch-size", "16", "--no-progress", *FP32)
    assert result.returncode == 0, result.stderr
    assert f"embedded {len(texts)} lines, skipped 2" in result.stderr
    vectors = np.load(out)
    assert vectors.shape == (len(texts), wm.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, wm.encode(texts), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["vectors.npy"]  # no temporary file left


def test_embed_parquet_round_trip(trained, wm, lines_file, tmp_path):
    path, texts = lines_file
    out = tmp_path / "vectors.parquet"
    args = ("--out", out, "--normalize", "--batch-size", "32", "--no-progress", *FP32)
    assert run_cli("embed", trained["world"], path, *args).returncode == 0
    table = pq.read_table(out)
    assert table.column_names == ["text", "embedding"] and table.column("text").to_pylist() == texts
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(vectors, wm.encode(texts, normalize=True), atol=1e-5)
    replies = tmp_path / "replies.npy"
    assert run_cli("embed", trained["world"], path, "--out", replies, "--reply", "--no-progress", *FP32).returncode == 0
    np.testing.assert_allclose(np.load(replies), wm.encode(texts, kind="reply"), atol=1e-5)
    latent_out = tmp_path / "latent.npy"
    assert run_cli("embed", trained["latent"], path, "--out", latent_out, "--no-progress", *FP32).returncode == 0
    latent = Encoder.load(trained["latent"], precision="fp32")
    np.testing.assert_allclose(np.load(latent_out), latent.encode(texts), atol=1e-5)


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_embed_memory_is_flat_in_the_file_size(trained, tmp_path, suffix):
    """A file 10x larger: the writer holds no more rows at once, and Python's peak memory does not grow with it
    (measured: about 0.15 MB for both; a writer that kept every vector until the end peaks at 2.7 MB here)."""
    from textjepa.embed import load_encoder, write_embeddings

    encoder = load_encoder(str(trained["world"]), reply=False, device="cpu", precision="fp32")
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    lines = synthetic_lines(2000, seed=9)
    small.write_text("\n".join(lines) + "\n")
    large.write_text("\n".join(lines * 10) + "\n")
    # Once untraced first: the first run imports pyarrow and fills caches, which is not the writer's memory.
    write_embeddings(encoder, small, tmp_path / f"warm-up{suffix}", batch_size=64, row_group=256)
    reports, peaks = {}, {}
    for name, path in (("small", small), ("large", large)):
        tracemalloc.start()  # Python's own allocations, numpy arrays and Parquet buffers included
        try:
            reports[name] = write_embeddings(encoder, path, tmp_path / f"{name}{suffix}", batch_size=64, row_group=256)
            peaks[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert reports["large"].rows == 10 * reports["small"].rows == 20_000
    assert reports["large"].buffered_rows_peak == reports["small"].buffered_rows_peak <= 256 + 64
    # The large file's vectors alone are 20,000 x dim x 4 bytes; its peak must stay near the small one's.
    vector_bytes = 20_000 * encoder.dim * 4
    assert peaks["large"] < peaks["small"] + vector_bytes / 2, peaks
    written = np.load(tmp_path / "large.npy") if suffix == ".npy" else None
    if written is not None:
        np.testing.assert_allclose(
            written[:5], Encoder.load(trained["world"], precision="fp32").encode(lines[:5]), atol=1e-5
        )


def test_embed_user_errors(trained, lines_file, tmp_path):
    path, _ = lines_file
    world = trained["world"]
    out = tmp_path / "out.npy"
    assert_user_error(run_cli("embed", tmp_path / "missing.safetensors", path, "--out", out), "not found")
    assert_user_error(run_cli("embed", world, tmp_path / "missing.txt", "--out", out), "data file not found")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert_user_error(run_cli("embed", world, path, "--out", blocker / "sub" / "out.npy"), "output directory")
    assert_user_error(run_cli("embed", world, path, "--out", tmp_path / "out.csv"), ".npy or .parquet")
    assert_user_error(run_cli("embed", world, path, "--out", out, "--batch-size", "0"), "batch-size")
    assert_user_error(run_cli("embed", trained["latent"], path, "--out", out, "--reply"), "world checkpoint")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_user_error(run_cli("embed", world, empty, "--out", out), "no usable")
    assert_user_error(run_cli("embed", world, path), "--out")
    # An existing output is never replaced silently.
    out.write_bytes(b"keep me")
    assert_user_error(run_cli("embed", world, path, "--out", out, "--no-progress"), "--overwrite")
    assert out.read_bytes() == b"keep me"
    assert run_cli("embed", world, path, "--out", out, "--overwrite", "--no-progress").returncode == 0
    assert np.load(out).shape[0] == len(lines_file[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty.txt", "out.npy"]


def test_embed_a_hub_dataset(trained, wm, hub, tmp_path):
    """`hub:<id>` is fetched once (from the fake Hub on 127.0.0.1) and embedded like a line file."""
    env = cli_env(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("HF_TOKEN", None)
    out = tmp_path / "hub.parquet"
    args = ("--out", out, "--data-dir", tmp_path / "data", "--no-progress", *FP32)
    result = run_cli("embed", trained["world"], "hub:textjepa-tests/plain-text", *args, env=env)
    assert result.returncode == 0, result.stderr
    texts = pq.read_table(out).column("text").to_pylist()
    assert len(texts) == 12 and texts[0] == "Generic line 0\nwith a second line and a tab."
    vectors = np.array(pq.read_table(out).column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(vectors, wm.encode(texts), atol=1e-5)


def test_the_api_default_precision_is_the_clis(trained):
    """WorldModel.load and Encoder.load default to --precision auto, resolved by the CLI's rule for the same work
    (a WorldModel serves as `infer` and `serve` do, an Encoder encodes as `embed` does), so `infer` and the
    Python API agree on every CPU."""
    from textjepa.runtime import choose_precision

    model, encoder = WorldModel.load(trained["world"], device="cpu"), Encoder.load(trained["latent"], device="cpu")
    serving = choose_precision("auto", torch.device("cpu"), work="serving").precision
    encoding = choose_precision(
        "auto", torch.device("cpu"), work="encoding", dim=encoder.checkpoint.config.dim
    ).precision
    assert (model.precision, encoder.precision) == (serving, encoding)
    prompt = "tell me about cooking please"
    shown = json.loads(run_cli("infer", trained["world"], prompt, "--json", "--top-k", "3").stdout)
    nearest = model.nearest_replies([{"role": "user", "content": prompt}], k=3)
    assert [text for text, _ in nearest] == [a["text"] for a in shown["alternatives"]]
    np.testing.assert_allclose([s for _, s in nearest], [a["score"] for a in shown["alternatives"]], atol=1e-5)
    with pytest.raises(TextJepaError, match="precision"):
        WorldModel.load(trained["world"], device="cpu", precision="fp16")
