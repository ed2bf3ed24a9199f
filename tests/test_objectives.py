"""The losses: each is built from its own config and returns its total and every term by name.

A new world-loss term is added in textjepa/objectives/world_loss.py and tested here.
"""

import dataclasses

import pytest
import torch

from textjepa.config import LatentConfig, ModelConfig, WorldConfig
from textjepa.errors import TextJepaError
from textjepa.models.heads import LatentModel, WorldModel
from textjepa.objectives.jepa_loss import JepaLoss, JepaLossConfig
from textjepa.objectives.regularizers import RegularizerConfig, regularizer_loss
from textjepa.objectives.terms import alignment_loss, info_nce, similarity_structure_loss
from textjepa.objectives.world_loss import WorldLoss, WorldLossConfig

TINY = ModelConfig(vocab_size=300, dim=32, layers=1, heads=4, max_seq=12, bridge_dim=16)


def world_batch(rows: int = 6, width: int = 10) -> dict:
    generator = torch.Generator().manual_seed(1)
    valid = torch.ones(rows, width, dtype=torch.bool)
    valid[0, 7:] = False
    return {
        "ids": torch.randint(3, 300, (rows, width), generator=generator),
        "valid": valid,
        "actions": torch.zeros(rows, dtype=torch.long),
        "target": torch.randn(rows, TINY.dim, generator=generator),
        "next_ids": torch.randint(3, 300, (rows, width), generator=generator),
        "next_valid": torch.ones(rows, width, dtype=torch.bool),
        "frozen": False,
    }


def test_world_loss_total_is_the_weighted_sum_of_its_named_terms():
    torch.manual_seed(0)
    model = WorldModel(TINY)
    config = WorldLossConfig(infonce_weight=0.5, temperature=0.1, bridge_weight=2.0, reply_contrast_weight=0.25)
    batch = world_batch()
    parts = WorldLoss(model, config, seed=0)(**batch)
    assert set(parts) == {"loss", "alignment", "infonce", "bridge", "reply_contrast", "variance", "covariance"}

    # The same terms computed by hand from the model's own outputs.
    prediction = model(batch["ids"], batch["valid"], batch["actions"])
    reply = model.state(batch["next_ids"], batch["next_valid"])
    reg, _ = regularizer_loss(prediction, config.regularization, None)
    expected = (
        alignment_loss(prediction, batch["target"])
        + 0.5 * info_nce(prediction, batch["target"], 0.1)
        + reg
        + 2.0 * similarity_structure_loss(model.conditioning_head(prediction), batch["target"])
        + 0.25 * info_nce(prediction, reply, 0.1)
    )
    assert float(parts["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(parts["infonce"]) == pytest.approx(
        float(info_nce(prediction, batch["target"], 0.1).detach()), rel=1e-5
    )
    assert all(not value.requires_grad for name, value in parts.items() if name != "loss")
    assert parts["loss"].requires_grad


def test_world_loss_weight_zero_drops_the_reply_term_and_frozen_keeps_the_encoder_still():
    torch.manual_seed(0)
    model = WorldModel(TINY)
    parts = WorldLoss(model, WorldLossConfig(reply_contrast_weight=0.0), seed=0)(**{**world_batch(), "frozen": True})
    assert "reply_contrast" not in parts
    parts["loss"].backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.transition.parameters())
    # The conditioning head learns from its own term only: it sees the prediction detached.
    assert all(p.grad is not None for p in model.conditioning_head.parameters())


def test_jepa_loss_parts_follow_the_regularizer_choice():
    torch.manual_seed(0)
    model = LatentModel(TINY)
    ids = torch.randint(3, 300, (4, 10))
    valid = torch.ones(4, 10, dtype=torch.bool)
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, 2:5] = True
    target = torch.randn(4, 10, TINY.dim)
    vicreg = JepaLoss(model, JepaLossConfig(), seed=0)(ids, valid, mask, target)
    assert set(vicreg) == {"loss", "alignment", "variance", "covariance"}
    latents = model.encoder(ids, valid)
    align = alignment_loss(model.predictor(latents[mask]), target[mask])
    assert float(vicreg["alignment"]) == pytest.approx(float(align.detach()), rel=1e-5)
    config = JepaLossConfig(RegularizerConfig(regularizer="sigreg", sigreg_weight=0.5))
    sigreg = JepaLoss(model, config, seed=0)(ids, valid, mask, target)
    assert set(sigreg) == {"loss", "alignment", "sigreg"}
    assert float(sigreg["loss"].detach()) == pytest.approx(
        float(sigreg["alignment"] + 0.5 * sigreg["sigreg"]), rel=1e-5
    )


def test_loss_configs_nest_in_the_stage_configs_and_reject_bad_values():
    assert WorldConfig().loss == WorldLossConfig() and LatentConfig().loss == JepaLossConfig()
    for config in (WorldLossConfig, RegularizerConfig):
        for field in dataclasses.fields(config):
            assert field.metadata.get("help"), f"{config.__name__}.{field.name} has no help"
    with pytest.raises(TextJepaError, match="regularizer"):
        JepaLossConfig(RegularizerConfig(regularizer="l2")).validate()
    with pytest.raises(TextJepaError, match="temperature"):
        WorldLossConfig(temperature=0.0).validate()
