"""Ablation: `condition(..., ablate=True)` hands the decoders an all-zero conditioning vector, and an LLM decoder
(the real TransformersDecoder, over a tiny random Llama built here rather than the 135M model) receives the zero
conditioning: through a prefix bridge its prefix is the projector's output for a zero latent, and without a bridge
its prompt carries the zero vector's text form. The world model is a real checkpoint with random weights."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import synthetic_lines

from textjepa.checkpoint import save_checkpoint
from textjepa.config import DecoderSettings, ModelConfig
from textjepa.data.tokens import train_tokenizer
from textjepa.decoders.base import Conditioning
from textjepa.decoders.prefix_bridge import Bridge, PrefixProjector, world_identity
from textjepa.decoders.prompting import with_text_conditioning
from textjepa.inference.world import WorldInference
from textjepa.io import RunFiles, RunKind
from textjepa.models.heads import WorldModel

pytest.importorskip("transformers", reason="pip install -e '.[llm]'")

CONTEXTS = ["User: the quick brown fox jumps over a lazy dog", "User: rivers carry water from mountains to the sea"]
MESSAGES = [{"role": "user", "content": "rivers carry water from mountains to the sea"}]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> WorldInference:
    """A world checkpoint with random weights and a real tokenizer, loaded the way the agent loads one."""
    root = tmp_path_factory.mktemp("ablation")
    tokenizer = train_tokenizer(synthetic_lines(200) + ["+0.123 -4.5678 chunks=[ mean= std= l2= head=]"] * 5, 400)
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), dim=32, layers=1, heads=2, max_seq=32)
    torch.manual_seed(0)
    network = WorldModel(config)
    files = RunFiles.create(root, RunKind.WORLD, "tiny")
    teacher = {f"encoder.{k}": v for k, v in network.encoder.state_dict().items()}
    for path, role, tensors in ((files.model, "online", network.state_dict()), (files.teacher, "teacher", teacher)):
        save_checkpoint(path, RunKind.WORLD, role, config, tensors, tokenizer, {"step": 1, "run_id": "r"})
    return WorldInference.load(files.model, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def lm(world):
    """A one-layer random Llama with the world model's tokenizer, wrapped as the decoders load an LM."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from textjepa.decoders.hf_model import CausalLM
    from textjepa.decoders.models import ModelSource

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=world.checkpoint.tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(1)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    return CausalLM(
        ModelSource(world.checkpoint.path.parent / "tiny-llama", "hf"), model, tokenizer, torch.device("cpu")
    )


def test_condition_with_ablate_returns_an_all_zero_vector(world):
    plain, _ = world.condition(CONTEXTS)
    ablated, _ = world.condition(CONTEXTS, ablate=True)
    for before, after in zip(plain, ablated, strict=True):
        assert before.vector.abs().sum() > 0 and not before.ablated  # what ablation has to remove
        assert after.ablated and after.vector.shape == before.vector.shape
        assert torch.equal(after.vector, torch.zeros_like(before.vector))
        # The prediction and the state stay: the retrieval decoder answers from the state when ablated.
        assert torch.equal(after.predicted, before.predicted) and torch.equal(after.state, before.state)


def test_an_llm_decoder_with_a_bridge_gets_the_zero_latents_prefix(world, lm):
    from textjepa.decoders.hf import TransformersDecoder

    torch.manual_seed(2)
    projector = PrefixProjector(world.config.predicted_dim, lm.hidden_size, 3).eval()
    bridge = Bridge(projector, lm.fingerprint(), world_identity(world.checkpoint))
    decoder = TransformersDecoder(lm, bridge, DecoderSettings(temperature=0))
    [plain], _ = world.condition(CONTEXTS[1:])
    [ablated], _ = world.condition(CONTEXTS[1:], ablate=True)
    with torch.no_grad():
        zero_prefix = projector(torch.zeros(1, world.config.predicted_dim))[0]
    prepared = decoder.prepare(MESSAGES, ablated, 4)
    assert torch.equal(prepared.prefix, zero_prefix)
    assert not torch.allclose(decoder.prepare(MESSAGES, plain, 4).prefix, zero_prefix)  # the prediction's differs
    # What the LM computes from it is what it computes for a zero predicted latent.
    zero = Conditioning(torch.zeros_like(plain.predicted), plain.state, torch.zeros_like(plain.vector))
    logits = decoder.next_token_logits(prepared)
    assert np.array_equal(logits, decoder.next_token_logits(decoder.prepare(MESSAGES, zero, 4)))
    assert not np.array_equal(logits, decoder.next_token_logits(decoder.prepare(MESSAGES, plain, 4)))
    options = {"ignore_eos": True}
    answer = decoder.generate(MESSAGES, ablated, 6, **options)
    assert answer.completion_tokens == 6 and answer.text == decoder.generate(MESSAGES, zero, 6, **options).text


def test_an_llm_decoder_without_a_bridge_reads_the_zero_vector(world, lm):
    from textjepa.decoders.hf import TransformersDecoder

    settings = DecoderSettings(temperature=0, cond_format="both")
    decoder = TransformersDecoder(lm, None, settings)
    [plain], _ = world.condition(CONTEXTS[1:])
    [ablated], _ = world.condition(CONTEXTS[1:], ablate=True)
    zero_prompt = lm.prompt_ids(with_text_conditioning(MESSAGES, torch.zeros_like(plain.vector), settings.cond_format))
    assert decoder.prepare(MESSAGES, ablated, 4).ids == zero_prompt
    assert decoder.prepare(MESSAGES, plain, 4).ids != zero_prompt
    # The text form comes from the vector itself: the flag alone does not zero it.
    flagged_only = dataclasses.replace(plain, ablated=True)
    assert decoder.prepare(MESSAGES, flagged_only, 4).ids != zero_prompt
