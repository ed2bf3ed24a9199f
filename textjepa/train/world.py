"""World-model training: state latent + action -> predicted next-turn latent, and the decoder bridge."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from textjepa.checkpoint import Checkpoint, check_shape_overrides, load_checkpoint, load_teacher, load_with_teacher
from textjepa.config import ModelConfig, WorldConfig
from textjepa.data.batches import Batch, iter_split_batches
from textjepa.data.sources import WORLD_RECORDS, load_corpus, resolve_data
from textjepa.data.tokens import TokenStore
from textjepa.decoders.retrieval import build_retrieval_index
from textjepa.errors import TextJepaError
from textjepa.eval.metrics import retrieval_metrics
from textjepa.io import RunKind
from textjepa.models.encoder import masked_mean
from textjepa.models.heads import WorldModel
from textjepa.objectives.jepa import alignment_loss, info_nce, regularizer_loss, similarity_structure_loss
from textjepa.runtime import (
    local_main_first,
    seed_everything,
)
from textjepa.train.loop import TrainResult, train_on_store, training_session


class WorldObjective(nn.Module):
    """The world model's trainable parts and its training loss.

    loss = alignment (2 - 2cos to the teacher's next-turn latent) + InfoNCE among the batch's next turns
    + regulariser on the predictions (so they do not collapse to the mean) + bridge loss. The bridge
    sees the prediction detached: it learns to keep the targets' similarity structure in the
    conditioning vector without pulling the transition towards itself.
    """

    def __init__(self, config: ModelConfig, cfg: WorldConfig) -> None:
        super().__init__()
        self.world = WorldModel(config)
        self.cfg = cfg
        self.generator = torch.Generator().manual_seed(cfg.train.seed + 29)

    @property
    def encoder(self) -> nn.Module:
        return self.world.encoder

    def forward(
        self,
        ids: torch.Tensor,
        valid: torch.Tensor,
        actions: torch.Tensor,
        target: torch.Tensor,
        frozen: bool,
        next_ids: torch.Tensor | None = None,
        next_valid: torch.Tensor | None = None,
    ):
        state = self.world.state(ids, valid)
        if frozen:
            state = state.detach()
        prediction = self.world.transition(state, actions)
        align = alignment_loss(prediction, target)
        contrast = info_nce(prediction, target, self.cfg.temperature)
        reg, reg_metrics = regularizer_loss(prediction, self.cfg.train, self.generator)
        bridge = similarity_structure_loss(self.world.bridge(prediction.detach()), target)
        loss = align + self.cfg.infonce_weight * contrast + reg + self.cfg.bridge_weight * bridge
        extra = {}
        if next_ids is not None:
            reply_latent = self.world.state(next_ids, next_valid)
            if frozen:
                reply_latent = reply_latent.detach()
            reply_contrast = info_nce(prediction, reply_latent, self.cfg.temperature)
            loss = loss + self.cfg.reply_contrast_weight * reply_contrast
            extra["reply_contrast"] = float(reply_contrast.detach())
        return loss, {
            **extra,
            "alignment": float(align.detach()),
            "infonce": float(contrast.detach()),
            "bridge": float(bridge.detach()),
            **reg_metrics,
        }


def action_mapping(store: TokenStore, actions: list[str], source: str) -> torch.Tensor:
    """Store action ids -> model action ids; an action the model does not know is an error."""
    unknown = [a for a in store.action_names if a not in actions]
    if unknown:
        raise TextJepaError(f"actions {unknown} in the data are unknown to {source} (it knows {actions})")
    return torch.tensor([actions.index(a) for a in store.action_names] or [0], dtype=torch.long)


def batch_tensors(batch: Batch, mapping: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    actions = (
        mapping[torch.from_numpy(batch.actions)]
        if batch.actions is not None
        else torch.zeros(len(batch.index), dtype=torch.long)
    )
    return {
        "ids": torch.from_numpy(batch.ids["context"]).to(device),
        "valid": torch.from_numpy(batch.valid["context"]).to(device),
        "next_ids": torch.from_numpy(batch.ids["next"]).to(device),
        "next_valid": torch.from_numpy(batch.valid["next"]).to(device),
        "actions": actions.to(device),
    }


class WorldStage:
    kind = RunKind.WORLD

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: Tokenizer,
        store: TokenStore,
        cfg: WorldConfig,
        device: torch.device,
        init: Checkpoint | None,
        mapping: torch.Tensor,
    ) -> None:
        self.config, self.tokenizer, self.store, self.cfg, self.device = config, tokenizer, store, cfg, device
        self.mapping = mapping
        self.lr_scales = {"world.encoder.": cfg.encoder_lr_scale}
        self.model = WorldObjective(config, cfg)
        self.teacher = copy.deepcopy(self.model.encoder)
        if init is not None:
            self._load_init(init)
        self.model.to(device)
        self.teacher.to(device).requires_grad_(False).eval()

    def _load_init(self, init: Checkpoint) -> None:
        world = self.model.world
        world.encoder.load_state_dict(init.module_state("encoder"))
        if init.kind == RunKind.WORLD:
            world.transition.load_state_dict(init.module_state("transition"))
            world.bridge.load_state_dict(init.module_state("bridge"))
        self.teacher.load_state_dict(load_teacher(init).module_state("encoder"))

    def _target(self, tensors: dict) -> torch.Tensor:
        with torch.no_grad():
            return masked_mean(self.teacher(tensors["next_ids"], tensors["next_valid"]), tensors["next_valid"])

    def make_inputs(self, batch: Batch, step: int) -> dict:
        tensors = batch_tensors(batch, self.mapping, self.device)
        inputs = {
            "ids": tensors["ids"],
            "valid": tensors["valid"],
            "actions": tensors["actions"],
            "target": self._target(tensors),
            "frozen": step < self.cfg.freeze_encoder_steps,
        }
        if self.cfg.reply_contrast_weight > 0:
            inputs.update(next_ids=tensors["next_ids"], next_valid=tensors["next_valid"])
        return inputs

    @torch.no_grad()
    def validate(self) -> dict:
        world = self.model.world
        predictions, targets = [], []
        sums: dict[str, float] = {}
        batches = 0
        for batch in iter_split_batches(
            self.store,
            self.cfg.train.batch,
            self.config.max_seq,
            "val",
            self.cfg.data.val_fraction,
            self.cfg.train.seed,
            max_batches=self.cfg.train.eval_batches,
        ):
            tensors = batch_tensors(batch, self.mapping, self.device)
            prediction = world(tensors["ids"], tensors["valid"], tensors["actions"])
            target = self._target(tensors)
            for key, value in retrieval_metrics(prediction, target).items():
                sums[key] = sums.get(key, 0.0) + value
            predictions.append(prediction)
            targets.append(target)
            batches += 1
        if batches == 0:
            raise TextJepaError("the validation split is smaller than one batch; raise --val-fraction or lower --batch")
        metrics = {f"val_{k}": v / batches for k, v in sums.items() if k in ("cosine_mean", "top1", "top5", "mrr")}
        return {"score": metrics["val_mrr"], **metrics}

    def checkpoint_tensors(self):
        online = dict(self.model.world.state_dict())
        teacher = {f"encoder.{k}": v for k, v in self.teacher.state_dict().items()}
        return online, teacher

    def checkpoint_info(self) -> dict:
        return {
            "init_encoder": self.cfg.init_encoder,
            "regularizer": self.cfg.train.regularizer,
            "infonce_weight": self.cfg.infonce_weight,
            "temperature": self.cfg.temperature,
        }

    def finish(self, best_path: Path) -> None:
        """The retrieval decoder's index: teacher latents of the training next turns, from the best checkpoint."""
        best, best_teacher = load_with_teacher(best_path, expect_kind=RunKind.WORLD)
        teacher = copy.deepcopy(self.teacher)
        teacher.load_state_dict(best_teacher.module_state("encoder"))
        index_path = build_retrieval_index(best_path, teacher, self.store, self.tokenizer, best.data, self.device)
        print(f"retrieval index: {index_path}")


def resolve_world_config(cfg: WorldConfig, overrides: dict) -> tuple[ModelConfig, Tokenizer | None, Checkpoint | None]:
    """The model shape: from --init-encoder's checkpoint when given (arguments must agree), else the arguments."""
    if not cfg.init_encoder:
        values = {k: v for k, v in overrides.items() if v is not None}
        if "max_vocab" in values:
            values["vocab_size"] = values.pop("max_vocab")
        return dataclasses.replace(cfg.model, **values), None, None
    init = load_checkpoint(cfg.init_encoder)
    checked = {k: v for k, v in overrides.items() if v is not None}
    if init.kind == RunKind.LATENT:
        bridge_dim = checked.pop("bridge_dim", cfg.model.bridge_dim)
        check_shape_overrides(init.config, checked, init.path)
        config = dataclasses.replace(init.config, bridge_dim=bridge_dim, actions=list(cfg.model.actions))
    else:
        check_shape_overrides(init.config, checked, init.path)
        config = init.config
    return config, init.tokenizer, init


def train_world(cfg: WorldConfig, shape_overrides: dict | None = None) -> TrainResult:
    cfg.train.validate()
    with training_session(cfg.train) as (device, dist, out_dir):
        config, tokenizer, init = resolve_world_config(cfg, shape_overrides or {})
        config.validate()
        with local_main_first(dist):  # caches are built once per node, then shared
            path = resolve_data(cfg.data.path, cfg.data.data_dir, RunKind.WORLD)
            tokenizer, store = load_corpus(
                path, WORLD_RECORDS, cfg.data, tokenizer, config.vocab_size, cfg.train.progress
            )
        if init is None or init.kind == RunKind.LATENT:
            config = dataclasses.replace(
                config, vocab_size=tokenizer.get_vocab_size(), actions=list(store.action_names)
            )
        mapping = action_mapping(store, config.actions, str(init.path) if init else "the model")
        seed_everything(cfg.train.seed)
        stage = WorldStage(config, tokenizer, store, cfg, device, init, mapping)
        return train_on_store(stage, store, path, cfg.data, cfg.train, config.max_seq, out_dir, dist)
