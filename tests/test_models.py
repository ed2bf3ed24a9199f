import math

import pytest
import torch

from textjepa.config import MaskingConfig, ModelConfig, TrainConfig
from textjepa.models.encoder import Encoder, format_size, masked_mean
from textjepa.objectives.masking import sample_span_mask, span_ids
from textjepa.objectives.regularizers import sigreg, vicreg_terms
from textjepa.objectives.terms import alignment_loss, info_nce
from textjepa.train.loop import ema_update
from textjepa.train.schedules import ema_momentum, lr_factor

TINY = ModelConfig(vocab_size=300, dim=32, layers=2, heads=4, max_seq=16)


def test_padding_never_changes_real_token_outputs():
    torch.manual_seed(0)
    encoder = Encoder(TINY).eval()
    ids = torch.randint(3, 300, (2, 10))
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 6:] = False
    out = encoder(ids, valid)
    garbage = ids.clone()
    garbage[1, 6:] = torch.randint(3, 300, (4,))  # different pad content
    longer_ids = torch.cat([garbage, torch.randint(3, 300, (2, 5))], dim=1)  # and more padding
    longer_valid = torch.cat([valid, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    out2 = encoder(longer_ids, longer_valid)
    assert torch.allclose(out[1, :6], out2[1, :6], atol=1e-5)
    assert torch.allclose(out[0], out2[0, :10], atol=1e-5)
    assert out2[1, 6:].abs().max() == 0  # padded outputs are zero
    pooled = masked_mean(out, valid)
    assert torch.allclose(pooled[1], out[1, :6].mean(0), atol=1e-6)


def test_span_mask_respects_ratio_cap_and_leaves_context_visible():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([2, 5, 16, 40, 64, 1])
    valid = torch.arange(64).unsqueeze(0) < lengths.unsqueeze(1)
    masking = MaskingConfig(max_spans=4, max_span_len=8, max_masked_ratio=0.4)
    for _ in range(50):
        mask = sample_span_mask(valid, masking, generator)
        counts = mask.sum(1)
        assert not (mask & ~valid).any()
        cap = torch.minimum((lengths * 0.4).floor().clamp_min(1), lengths - 1)
        assert (counts <= cap).all()
        assert (counts[:5] >= 1).all()  # every row with two or more tokens gets a mask
        assert counts[5] == 0  # a one-token row has nothing to predict from
        assert (valid.sum(1) - counts >= 1).all()


def test_span_ids_number_contiguous_runs():
    mask = torch.tensor([[False, True, True, False, True], [True, False, False, True, True]])
    assert span_ids(mask).tolist() == [[0, 1, 1, 0, 2], [3, 0, 0, 4, 4]]


def test_vicreg_penalises_collapse():
    spread = torch.randn(512, 16)
    collapsed = torch.ones(512, 16) + 0.001 * torch.randn(512, 16)
    var_spread, _ = vicreg_terms(spread)
    var_collapsed, _ = vicreg_terms(collapsed)
    assert var_spread < 0.1 < var_collapsed
    correlated = torch.randn(512, 1).repeat(1, 16)
    assert vicreg_terms(correlated)[1] > 10 * vicreg_terms(spread)[1]


def test_sigreg_is_small_for_gaussian_and_large_for_collapse():
    generator = torch.Generator().manual_seed(0)
    gaussian = torch.randn(1024, 32, generator=generator)
    collapsed = torch.zeros(1024, 32) + 0.01 * torch.randn(1024, 32, generator=generator)
    assert sigreg(gaussian, 64, generator) < 0.1 * sigreg(collapsed, 64, generator)


def test_alignment_is_two_minus_two_cos_and_infonce_prefers_matches():
    a = torch.tensor([[1.0, 0.0]])
    assert alignment_loss(a, torch.tensor([[3.0, 0.0]])) == pytest.approx(0.0)
    assert alignment_loss(a, torch.tensor([[0.0, 2.0]])) == pytest.approx(2.0)
    targets = torch.randn(8, 16)
    assert info_nce(targets, targets, 0.1) < info_nce(targets.roll(1, 0), targets, 0.1)


def test_ema_update_moves_teacher_towards_student():
    teacher, student = Encoder(TINY), Encoder(TINY)
    before = next(teacher.parameters()).clone()
    target = next(student.parameters()).clone()
    ema_update(teacher, student, 0.9)
    assert torch.allclose(next(teacher.parameters()), 0.9 * before + 0.1 * target, atol=1e-6)


def test_schedules_warm_up_hold_and_decay():
    train = TrainConfig(steps=100, warmup_fraction=0.1, decay_fraction=0.3, min_lr_ratio=0.1)
    factors = [lr_factor(s, train) for s in range(100)]
    assert factors[0] < factors[5] < factors[9] == 1.0
    assert all(f == 1.0 for f in factors[10:70])
    assert factors[99] < 0.15 and all(a >= b for a, b in zip(factors[70:], factors[71:]))
    assert ema_momentum(0, train) == pytest.approx(train.ema_start)
    assert ema_momentum(99, train) == pytest.approx(train.ema_end)
    assert math.isclose(ema_momentum(50, train), (train.ema_start + train.ema_end) / 2, rel_tol=1e-3)


def test_size_tags_match_the_seed():
    assert format_size(9_510_000) == "9.51M"
    assert format_size(512_000) == "512.0k"


def test_config_rejects_heads_not_dividing_dim():
    from textjepa.errors import TextJepaError

    with pytest.raises(TextJepaError, match="heads"):
        ModelConfig(vocab_size=300, dim=30, heads=4).validate()


def test_bridge_schedule_decays_from_the_end_of_warmup_to_a_tenth():
    from textjepa.train.schedules import warmup_cosine

    factors = [warmup_cosine(s, 100, 0.05, None, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.2) and factors[4] == 1.0  # 5 warmup steps
    assert all(a > b for a, b in zip(factors[5:], factors[6:]))  # no flat part: the decay starts at once
    assert factors[99] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 94 / 95)))


def test_a_training_state_of_another_layout_is_a_clear_error(tmp_path):
    from textjepa.errors import TextJepaError
    from textjepa.models.heads import WorldModel
    from textjepa.train.resume import load_model_state

    model = WorldModel(TINY)
    older = {f"world.{k}": v for k, v in model.state_dict().items()}  # how the states of older versions name them
    with pytest.raises(TextJepaError, match="laid out otherwise"):
        load_model_state(model, older, tmp_path / "old.state.pt")
    changed = {k: v + 1 for k, v in model.state_dict().items()}
    load_model_state(model, changed, tmp_path / "new.state.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in changed.items())


def test_vicreg_terms_are_the_textbook_variance_hinge_and_off_diagonal_covariance():
    # vicreg_terms reads each dimension's variance off the covariance's diagonal; the reference takes it from var(0).
    torch.manual_seed(0)
    # Mixed scales: some dimensions under the hinge's std of 1, some over it; correlated through the matrix.
    z = (torch.randn(300, 24) @ torch.randn(24, 24) * torch.linspace(0.02, 0.5, 24)).requires_grad_()
    variance, covariance = vicreg_terms(z)
    (variance + covariance).backward()
    reference_z = z.detach().clone().requires_grad_()
    centred = reference_z - reference_z.mean(0)
    ref_variance = torch.relu(1.0 - torch.sqrt(centred.var(0) + 1e-4)).mean()
    cov = centred.T @ centred / (len(z) - 1)
    ref_covariance = (cov - torch.diag(torch.diag(cov))).pow(2).sum() / z.shape[1]
    (ref_variance + ref_covariance).backward()
    assert 0 < variance.item() and 0 < covariance.item()
    assert torch.allclose(variance, ref_variance, rtol=1e-5)
    assert torch.allclose(covariance, ref_covariance, rtol=1e-5)
    assert torch.allclose(z.grad, reference_z.grad, rtol=1e-4, atol=1e-7)


def _attention_by_autograd(qkv: torch.Tensor, heads: int, attn_mask: torch.Tensor) -> torch.Tensor:
    batch, length, width = qkv.shape
    q, k, v = qkv.view(batch, length, 3, heads, width // 3 // heads).permute(2, 0, 3, 1, 4)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).reshape(batch, length, width // 3)


def test_attention_gradient_is_autograds_own_bit_for_bit():
    from textjepa.models.encoder import attention

    torch.manual_seed(0)
    valid = torch.rand(3, 7) > 0.3
    valid[:, 0] = True
    mask = valid[:, None, None, :]
    qkv = torch.randn(3, 7, 3 * 32, requires_grad=True)
    reference = qkv.detach().clone().requires_grad_()
    out, expected = attention(qkv, 4, mask), _attention_by_autograd(reference, 4, mask)
    assert torch.equal(out, expected)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    expected.backward(upstream)
    assert torch.equal(qkv.grad, reference.grad)
    assert qkv.grad[..., 64:].abs().sum() > 0  # the values' part too, not only queries and keys


def test_attention_gradient_when_only_some_heads_inputs_reach_the_loss():
    # Only v reaches the loss through a uniform attention (q = k = 0): q's and k's gradients may come back as None.
    from textjepa.models.encoder import _SplitHeads

    qkv = torch.randn(2, 5, 3 * 8, requires_grad=True)
    q, k, v = _SplitHeads.apply(qkv, 2)
    v.sum().backward()
    expected = torch.zeros_like(qkv)
    expected[..., 16:] = 1.0
    assert torch.equal(qkv.grad, expected)
