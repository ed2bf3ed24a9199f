"""The losses: each is built from its own config and returns its total and every term by name.

A new world-loss term is added in textjepa/objectives/world_loss.py and tested here.
"""

import dataclasses

import pytest
import torch

from textjepa.config import LatentConfig, ModelConfig, TrainConfig, WorldConfig
from textjepa.errors import TextJepaError
from textjepa.models.heads import LatentModel, WorldModel
from textjepa.objectives.configs import JepaLossConfig, RegularizerConfig, WorldLossConfig
from textjepa.objectives.jepa_loss import JepaLoss
from textjepa.objectives.regularizers import regularizer_loss
from textjepa.objectives.terms import alignment_loss, info_nce, similarity_structure_loss
from textjepa.objectives.world_loss import WorldLoss

TINY = ModelConfig(vocab_size=300, dim=32, layers=1, heads=4, max_seq=12, cond_dim=16)


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
    config = WorldLossConfig(infonce_weight=0.5, temperature=0.1, cond_weight=2.0, reply_contrast_weight=0.25)
    batch = world_batch()
    parts = WorldLoss(model, config, seed=0)(**batch)
    assert set(parts) == {"loss", "alignment", "infonce", "cond", "reply_contrast", "variance", "covariance"}

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


def test_queue_adds_earlier_targets_as_negatives_skips_a_rows_own_reply_and_wraps():
    torch.manual_seed(0)
    model = WorldModel(TINY)
    config = WorldLossConfig(queue_size=8, temperature=0.1, reply_contrast_weight=0.0)
    loss = WorldLoss(model, config, seed=0)
    first = world_batch()
    empty = loss(**first)
    prediction = model(first["ids"], first["valid"], first["actions"]).detach()
    # An empty queue adds nothing; then it holds the first batch's targets, unit length, in slots 0..5.
    assert float(empty["infonce"]) == pytest.approx(float(info_nce(prediction, first["target"], 0.1)), rel=1e-5)
    assert int(loss.queue_filled) == 6
    assert torch.allclose(loss.queue[:6], torch.nn.functional.normalize(first["target"], dim=-1))

    # The same replies again: each row's own earlier entry is skipped, the other five rows' are negatives.
    second = {**first, "target": first["target"] + 0.1 * torch.randn(6, TINY.dim)}
    parts = loss(**second)
    prediction = model(second["ids"], second["valid"], second["actions"]).detach()
    unit = torch.nn.functional.normalize(prediction, dim=-1)
    negatives = torch.nn.functional.normalize(first["target"], dim=-1)
    logits = torch.cat(
        [unit @ torch.nn.functional.normalize(second["target"], dim=-1).T, (unit @ negatives.T).fill_diagonal_(-1e9)],
        dim=1,
    )
    expected = torch.nn.functional.cross_entropy(logits / 0.1, torch.arange(6))
    assert float(parts["infonce"]) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(parts["infonce"]) > float(info_nce(prediction, second["target"], 0.1))  # more negatives, harder

    # A ring buffer: the second batch filled slots 6, 7 and then 0..3; slots 4, 5 still hold the first's.
    assert int(loss.queue_filled) == 12
    written = torch.nn.functional.normalize(second["target"], dim=-1)
    assert torch.allclose(loss.queue[[6, 7, 0, 1, 2, 3]], written)
    assert torch.allclose(loss.queue[[4, 5]], negatives[[4, 5]])
    # Keys hash the reply tokens, padding ignored: the same reply padded wider has the same key.
    wider = torch.nn.functional.pad(first["next_ids"], (0, 2)), torch.nn.functional.pad(first["next_valid"], (0, 2))
    assert torch.equal(loss.reply_keys(*wider), loss.reply_keys(first["next_ids"], first["next_valid"]))
    assert len(set(loss.reply_keys(first["next_ids"], first["next_valid"]).tolist())) == 6
    parts["loss"].backward()  # the in-place queue update leaves the graph intact


def test_symmetric_infonce_and_learned_temperature():
    torch.manual_seed(0)
    model = WorldModel(TINY)
    config = WorldLossConfig(symmetric_infonce=True, learn_temperature=True, temperature=0.2)
    loss = WorldLoss(model, config, seed=0)
    batch = world_batch()
    parts = loss(**batch)
    prediction = model(batch["ids"], batch["valid"], batch["actions"])
    reply = model.state(batch["next_ids"], batch["next_valid"])
    both_ways = (info_nce(prediction, batch["target"], 0.2) + info_nce(batch["target"], prediction, 0.2)) / 2
    assert float(parts["infonce"]) == pytest.approx(float(both_ways.detach()), rel=1e-5)
    reply_both = (info_nce(prediction, reply, 0.2) + info_nce(reply, prediction, 0.2)) / 2
    assert float(parts["reply_contrast"]) == pytest.approx(float(reply_both.detach()), rel=1e-5)
    assert float(parts["temperature"]) == pytest.approx(0.2)
    # The temperature is a parameter of the loss, not of the model (checkpoints keep their layout), and learns.
    parts["loss"].backward()
    assert loss.log_inverse_temperature.grad is not None and float(loss.log_inverse_temperature.grad) != 0
    assert "log_inverse_temperature" not in dict(model.named_parameters())
    with torch.no_grad():
        loss.log_inverse_temperature.fill_(10.0)  # far past a logit scale of 100
    assert float(loss.temperature()) == pytest.approx(0.01)


def test_loss_state_round_trips_so_a_resumed_run_continues_exactly(tmp_path):
    from textjepa.train.loop import build_optimizer
    from textjepa.train.resume import load_loss_state, loss_own_state

    config = WorldLossConfig(queue_size=16, learn_temperature=True)
    torch.manual_seed(0)
    loss = WorldLoss(WorldModel(TINY), config, seed=0)
    batches = [world_batch() for _ in range(2)]
    for batch in batches:
        parts = loss(**batch)
    # The second batch repeats the first's replies, so queued entries are masked: the gradient stays finite.
    parts["loss"].backward()
    assert torch.isfinite(loss.log_inverse_temperature.grad)
    state = loss_own_state(loss)
    assert set(state) == {"queue", "queue_keys", "queue_filled", "log_inverse_temperature"}
    torch.save(state, tmp_path / "loss.pt")
    optimizer = build_optimizer(loss.model, TrainConfig(), loss=loss)
    assert optimizer.param_groups[-1]["params"] == [loss.log_inverse_temperature]

    fresh = WorldLoss(WorldModel(TINY), config, seed=0)
    fresh.model.load_state_dict(loss.model.state_dict())
    load_loss_state(fresh, torch.load(tmp_path / "loss.pt"), tmp_path / "loss.pt")
    assert float(fresh(**batches[0])["loss"]) == float(loss(**batches[0])["loss"])
    other = WorldLoss(WorldModel(TINY), WorldLossConfig(queue_size=32), seed=0)
    with pytest.raises(TextJepaError, match="queue-size"):
        load_loss_state(other, state, tmp_path / "loss.pt")
    with pytest.raises(TextJepaError, match="queue"):
        WorldLossConfig(queue_size=-1).validate()
