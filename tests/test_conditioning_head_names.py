"""The world model's conditioning head under its own name (`--cond-dim`, `--cond-weight`, metric `cond`), with
the names it had when it was called the bridge still working: the flags as aliases, the seed form's positional
`bridge_dim`, and checkpoints that store the width as `bridge_dim` (every version writes and reads that key)."""

from __future__ import annotations

import json

import torch
from conftest import synthetic_lines
from safetensors import safe_open

from textjepa.checkpoint import load_checkpoint, save_checkpoint
from textjepa.cli import build_parser, command_config
from textjepa.cli.common import shape_checks
from textjepa.cli.seed_form import translate_seed_form
from textjepa.config import ModelConfig
from textjepa.data.tokens import train_tokenizer
from textjepa.io import RunKind
from textjepa.models.heads import CONDITIONING_HEAD_KEY, WorldModel


def parsed(*argv: str):
    return command_config(build_parser().parse_args(translate_seed_form(list(argv))))


def test_the_new_flags_and_their_old_aliases_set_the_same_fields():
    for dim_flag, weight_flag in (("--cond-dim", "--cond-weight"), ("--bridge-dim", "--bridge-weight")):
        cfg = parsed("train-world", "pairs.txt", dim_flag, "24", weight_flag, "0.5")
        assert (cfg.model.cond_dim, cfg.loss.cond_weight) == (24, 0.5)
    assert parsed("train-world", "pairs.txt").model.cond_dim == 256
    # infer: --bridge is the prefix bridge's file; --bridge-dim the conditioning head's width, checked against the model
    args = build_parser().parse_args(["infer", "m.safetensors", "hi", "--bridge-dim", "8", "--bridge", "b.safetensors"])
    assert command_config(args).bridge == "b.safetensors" and shape_checks(args) == {"cond_dim": 8}


def test_the_seed_forms_positional_bridge_dim_sets_the_conditioning_head():
    # DATA steps batch dim max_seq layers heads max_vocab bridge_dim
    cfg = parsed("--train-world", "pairs.txt", "10", "4", "32", "16", "1", "4", "400", "24")
    assert (cfg.model.dim, cfg.model.vocab_size, cfg.model.cond_dim) == (32, 400, 24)


def test_checkpoints_store_the_width_under_its_old_key_and_old_checkpoints_load(tmp_path):
    tokenizer = train_tokenizer(synthetic_lines(100), 300)
    config = ModelConfig(vocab_size=tokenizer.get_vocab_size(), dim=32, layers=1, heads=2, max_seq=24, cond_dim=12)
    assert "bridge_dim" in config.to_dict() and "cond_dim" not in config.to_dict()
    assert ModelConfig.from_dict(config.to_dict()) == config
    world = WorldModel(config)
    path = tmp_path / "model_world_tiny.safetensors"
    save_checkpoint(path, RunKind.WORLD, "online", config, world.state_dict(), tokenizer, {"step": 1})
    with safe_open(str(path), "pt") as handle:
        stored = json.loads(handle.metadata()["config"])
        names = {key.split(".")[0] for key in handle.keys()}
    # The layout every earlier checkpoint has: what they were written with is what this version writes.
    assert stored["bridge_dim"] == 12 and "cond_dim" not in stored
    assert names == {"encoder", "transition", CONDITIONING_HEAD_KEY} and CONDITIONING_HEAD_KEY == "bridge"
    loaded = load_checkpoint(path)
    assert loaded.config.cond_dim == 12
    head = WorldModel(loaded.config)
    head.load_state_dict(loaded.tensors)
    saved, reloaded = world.conditioning_head.state_dict(), head.conditioning_head.state_dict()
    assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
