"""How a text becomes one latent: mean and lexical pooling, on real tensors and through the real CLI."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY, assert_user_error, pair_lines, run_cli, train_world_on
from safetensors import safe_open

from textjepa.config import ModelConfig, WorldConfig
from textjepa.io import RunFiles
from textjepa.models.encoder import Encoder, pooling_weights

TINY_MEAN = ModelConfig(vocab_size=300, dim=32, layers=2, heads=4, max_seq=16)
TINY_LEXICAL = ModelConfig(vocab_size=300, dim=32, layers=2, heads=4, max_seq=16, pooling="lexical", lexical_weight=2)


def test_pooling_weights_are_squared_idf_of_documents_not_occurrences():
    # Three documents; token 5 in all three (twice in the first), 6 in two, 7 in one, 9 in none.
    tokens, lengths = np.array([5, 5, 6, 7, 5, 6, 5], dtype=np.uint16), np.array([4, 2, 1])
    weights = pooling_weights([(tokens, lengths)], 300)
    idf = {5: math.log(4 / 4) + 1, 6: math.log(4 / 3) + 1, 7: math.log(4 / 2) + 1, 9: math.log(4 / 1) + 1}
    for token, value in idf.items():
        assert weights[token].item() == pytest.approx(value**2, rel=1e-6), token
    # A second chunk (the replies) adds its documents to the same counts.
    both = pooling_weights([(tokens, lengths), (np.array([7], dtype=np.uint16), np.array([1]))], 300)
    assert both[7].item() == pytest.approx((math.log(5 / 3) + 1) ** 2, rel=1e-6)
    assert both[5].item() == pytest.approx((math.log(5 / 4) + 1) ** 2, rel=1e-6)


def test_lexical_pooling_mixes_weighted_means_of_token_latents_and_normed_embeddings():
    torch.manual_seed(0)
    encoder = Encoder(TINY_LEXICAL).eval()
    weights = torch.rand(300) + 0.5
    encoder.set_token_weights(weights)
    ids = torch.randint(3, 300, (2, 8))
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[1, 5:] = False
    with torch.no_grad():
        latents = encoder(ids, valid)
        pooled = encoder.pooled(ids, valid)
        lexical = torch.nn.functional.layer_norm(encoder.token_embedding(ids), (32,))
    for row in range(2):
        n = int(valid[row].sum())
        w = weights[ids[row, :n]].unsqueeze(-1)
        contextual = (latents[row, :n] * w).sum(0) / w.sum()
        words = (lexical[row, :n] * w).sum(0) / w.sum()
        expected = 32**0.5 * (contextual / contextual.norm() + 2.0 * words / words.norm())
        assert torch.allclose(pooled[row], expected, atol=1e-4)
    # Padding content never changes the pooled latent.
    garbage = ids.clone()
    garbage[1, 5:] = torch.randint(3, 300, (3,))
    with torch.no_grad():
        assert torch.allclose(encoder.pooled(garbage, valid), pooled, atol=1e-6)


def test_lexical_pooling_keeps_which_tokens_a_text_uses():
    """What the setting is for: an untrained encoder's pooled latents of a question and its reply, which share only
    their rare tokens (in another order, among different common ones), find each other among 64."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=2000, dim=256, layers=2, heads=4, max_seq=16, pooling="lexical")
    encoder = Encoder(config).eval()
    common, rare = torch.arange(3, 13), torch.arange(100, 2000)
    weights = torch.full((2000,), 9.0)
    weights[common] = 1.0
    encoder.set_token_weights(weights)
    generator = torch.Generator().manual_seed(0)
    n = 64
    topics = rare[torch.randperm(len(rare), generator=generator)[: 3 * n]].view(n, 3)
    questions = torch.cat([common[:5].expand(n, 5), topics], dim=1)
    replies = torch.cat([topics.flip(1), common[5:].expand(n, 5)], dim=1)
    valid = torch.ones_like(questions, dtype=torch.bool)

    def top1(pool) -> float:
        q, r = (torch.nn.functional.normalize(pool(x), dim=-1) for x in (questions, replies))
        return ((q @ r.T).argmax(1) == torch.arange(n)).float().mean().item()

    with torch.no_grad():
        assert top1(lambda x: encoder.pooled(x, valid)) > 0.9


def test_an_encoder_saved_without_pooling_tensors_loads_into_lexical_pooling():
    torch.manual_seed(0)
    plain = Encoder(TINY_MEAN).eval()
    assert "token_weights" not in plain.state_dict()  # mean pooling keeps the checkpoint format unchanged
    lexical = Encoder(TINY_LEXICAL).eval()
    lexical.set_token_weights(torch.full((300,), 3.0))
    lexical.load_state_dict(plain.state_dict())  # strict: only the pooling tensors start fresh
    assert torch.equal(lexical.token_weights, torch.ones(300))
    assert torch.equal(lexical.lexical_norm.weight, torch.ones(32))
    with pytest.raises(RuntimeError, match="blocks.0"):  # anything else missing is still an error
        lexical.load_state_dict({k: v for k, v in plain.state_dict().items() if not k.startswith("blocks.0")})
    with pytest.raises(ValueError, match="lexical"):
        plain.set_token_weights(torch.ones(300))


def test_pooling_defaults_and_old_checkpoint_configs():
    assert WorldConfig().model.pooling == "lexical"
    assert ModelConfig().pooling == "mean"  # JEPA pools nothing
    old = {k: v for k, v in TINY_LEXICAL.to_dict().items() if k != "pooling"}
    assert ModelConfig.from_dict(old).pooling == "mean"
    assert ModelConfig.from_dict(TINY_LEXICAL.to_dict()).pooling == "lexical"


@pytest.fixture(scope="module")
def lexical_world(tiny_world):
    """The session's tiny world model: lexical pooling is train-world's default."""
    return tiny_world


def test_train_world_stores_corpus_pooling_weights_in_both_encoders(lexical_world):
    files = RunFiles(lexical_world["world"])
    with safe_open(str(files.model), "pt") as handle:
        assert json.loads(handle.metadata()["config"])["pooling"] == "lexical"
        weights = handle.get_tensor("encoder.token_weights")
        assert "encoder.lexical_norm.weight" in handle.keys()
    with safe_open(str(files.teacher), "pt") as handle:
        assert torch.equal(handle.get_tensor("encoder.token_weights"), weights)
    with safe_open(str(lexical_world["latent"]), "pt") as handle:
        assert "encoder.token_weights" not in handle.keys()  # JEPA does not pool
    # 480 pairs, 20% held out: ~384 contexts + ~384 replies. "tell me about" is in every context (idf close to
    # ln(769 / 385) + 1), tokens the pairs never use (the JEPA corpus's) weigh the most, (ln(N + 1) + 1)^2.
    n_documents = round((math.exp(weights.max().sqrt().item() - 1)) - 1)
    assert 650 <= n_documents <= 850
    assert weights.min().item() <= (math.log((1 + n_documents) / (1 + n_documents / 2)) + 1) ** 2 + 1e-4
    assert len(set(weights.tolist())) > 3


def test_a_lexical_world_model_answers_through_the_api_and_the_cli(lexical_world):
    from textjepa.api import WorldModel
    from textjepa.models.encoder import Encoder as EncoderNetwork

    model = WorldModel.load(lexical_world["world"], device="cpu", precision="fp32")
    texts = ["User: tell me about cooking please", "the oven is hot and the soup is ready"]
    replies = model.encode(texts, kind="reply")
    # The API pools as training did: the teacher's own lexical pooling of the tokens, weights included.
    files = RunFiles(lexical_world["world"])
    teacher = EncoderNetwork(model.checkpoint.config).eval()
    with safe_open(str(files.teacher), "pt") as handle:
        teacher.load_state_dict({k.removeprefix("encoder."): handle.get_tensor(k) for k in handle.keys()})
    tokens = model.core.teacher_encoder.tokenize(texts)
    with torch.no_grad():
        assert np.allclose(replies, teacher.pooled(tokens.ids, tokens.valid).numpy(), atol=1e-5)
    assert len(model.nearest_replies(texts[0], k=3)) == 3
    answer = run_cli("infer", lexical_world["world"], "tell me about cooking please", "--json", "--top-k", "3")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["output"]


def test_a_mean_pooled_world_model_still_trains_and_evaluates(tiny_world, tmp_path):
    run = train_world_on(tiny_world, tiny_world["latent"], tmp_path / "world", "--pooling", "mean")
    with safe_open(str(run["world"]), "pt") as handle:
        assert json.loads(handle.metadata()["config"])["pooling"] == "mean"
        assert "encoder.token_weights" not in handle.keys()
    report = tmp_path / "eval.json"
    result = run_cli("eval-world", run["world"], "--batch", "16", "--data-dir", run["cache"], "--json", report)
    assert result.returncode == 0, result.stderr
    assert json.loads(report.read_text())["world_model"]["R@1"] > 1 / 16


def numbered_pairs(count: int) -> list[str]:
    """Questions about a topic and an item number -> an answer naming the same item: the item's digits are the
    only words a question shares with its own answer and not with the others of its topic."""
    lines = pair_lines(count)
    return [f"{line.replace('|||', chr(9))} item {i}" for i, line in enumerate(lines)]


def test_lexical_pooling_matches_shared_words_that_mean_pooling_misses(tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(numbered_pairs(480)) + "\n")
    cache, results = tmp_path / "cache", {}
    for pooling in ("lexical", "mean"):
        out, report = tmp_path / pooling, tmp_path / f"{pooling}.json"
        trained = run_cli(
            "train-world", pairs, *TINY, "--pooling", pooling, "--steps", "60", "--batch", "24", "--eval-every", "60",
            "--lr", "2e-3", "--val-fraction", "0.2", "--out-dir", out, "--data-dir", cache, "--no-progress",
        )  # fmt: skip
        assert trained.returncode == 0, trained.stderr
        world = next(p for p in out.glob("model_world_*.safetensors") if "_teacher" not in p.name)
        evaluated = run_cli("eval-world", world, "--batch", "16", "--data-dir", cache, "--json", report)
        assert evaluated.returncode == 0, evaluated.stderr
        results[pooling] = json.loads(report.read_text())
    lexical, mean = results["lexical"], results["mean"]
    assert lexical["world_model"]["R@1"] > 0.5, lexical
    assert lexical["world_model"]["R@1"] > mean["world_model"]["R@1"] + 0.2, (lexical, mean)


def test_pooling_mistakes_are_one_line_errors(lexical_world, tmp_path):
    common = ["--steps", "2", "--batch", "8", "--data-dir", lexical_world["cache"], "--no-progress"]
    pairs = lexical_world["pairs"]
    bad = run_cli("train-world", pairs, *TINY, "--pooling", "max", "--out-dir", tmp_path / "a", *common)
    assert_user_error(bad, "pooling")
    # A world checkpoint describes its pooling: asking for another one is a disagreement, not a silent change.
    mismatch = run_cli(
        "train-world", pairs, "--init-encoder", lexical_world["world"], "--pooling", "mean",
        "--out-dir", tmp_path / "b", *common,
    )  # fmt: skip
    assert_user_error(mismatch, "pooling", "disagrees")
