"""JEPA pretraining: predict the teacher's latents of masked spans from the visible rest of the line."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from textjepa.config import MASK_ID, LatentConfig, MaskingConfig, ModelConfig, TrainConfig
from textjepa.data.batches import Batch, iter_split_batches
from textjepa.data.sources import LATENT_RECORDS, load_corpus, resolve_data
from textjepa.data.tokens import TokenStore
from textjepa.errors import TextJepaError
from textjepa.io import RunKind
from textjepa.models.heads import LatentModel
from textjepa.objectives.jepa import alignment_loss, regularizer_loss
from textjepa.objectives.masking import keyed_uniforms, mask_uniform_columns, sample_span_mask
from textjepa.runtime import (
    local_main_first,
    seed_everything,
)
from textjepa.train.loop import TrainResult, train_on_store, training_session

_MAX_REGULARIZER_ROWS = 1024


class JepaObjective(nn.Module):
    """Online encoder on the masked view + predictor at masked positions, against teacher targets."""

    def __init__(self, config: ModelConfig, train: TrainConfig) -> None:
        super().__init__()
        model = LatentModel(config)
        self.encoder, self.predictor = model.encoder, model.predictor
        self.train_config = train
        self.generator = torch.Generator().manual_seed(train.seed + 17)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor, target: torch.Tensor):
        latents = self.encoder(ids, valid)
        prediction = self.predictor(latents[mask])
        align = alignment_loss(prediction, target[mask])
        rows = latents[valid]
        if len(rows) > _MAX_REGULARIZER_ROWS:
            pick = torch.randperm(len(rows), generator=self.generator)[:_MAX_REGULARIZER_ROWS].to(rows.device)
            rows = rows[pick]
        reg, reg_metrics = regularizer_loss(rows, self.train_config, self.generator)
        return align + reg, {"alignment": float(align.detach()), **reg_metrics}


def masked_view(
    batch_ids: torch.Tensor,
    valid: torch.Tensor,
    masking: MaskingConfig,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
):
    mask = sample_span_mask(valid.cpu(), masking, generator, uniforms).to(valid.device)
    return batch_ids.masked_fill(mask, MASK_ID), mask


class LatentStage:
    kind = RunKind.LATENT

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: Tokenizer,
        store: TokenStore,
        cfg: LatentConfig,
        device: torch.device,
    ) -> None:
        self.config, self.tokenizer, self.store, self.cfg, self.device = config, tokenizer, store, cfg, device
        self.model = JepaObjective(config, cfg.train).to(device)
        self.teacher = copy.deepcopy(self.model.encoder).requires_grad_(False).eval()

    def make_inputs(self, batch: Batch, step: int) -> dict:
        ids = torch.from_numpy(batch.ids["text"]).to(self.device)
        valid = torch.from_numpy(batch.valid["text"]).to(self.device)
        # Masks keyed by (record, step, seed): the same whichever rank or world size draws the record, and
        # a resumed run masks exactly as an uninterrupted one would.
        salt = (self.cfg.train.seed + 1) * 1_000_003 + step
        uniforms = keyed_uniforms(batch.index, salt, mask_uniform_columns(self.cfg.masking))
        masked_ids, mask = masked_view(ids, valid, self.cfg.masking, uniforms=uniforms)
        with torch.no_grad():
            target = self.teacher(ids, valid)
        return {"ids": masked_ids, "valid": valid, "mask": mask, "target": target}

    @torch.no_grad()
    def validate(self) -> dict:
        generator = torch.Generator().manual_seed(12345)
        total_align, total_cos, batches = 0.0, 0.0, 0
        for batch in iter_split_batches(
            self.store,
            self.cfg.train.batch,
            self.config.max_seq,
            "val",
            self.cfg.data.val_fraction,
            self.cfg.train.seed,
            max_batches=self.cfg.train.eval_batches,
        ):
            ids = torch.from_numpy(batch.ids["text"]).to(self.device)
            valid = torch.from_numpy(batch.valid["text"]).to(self.device)
            masked_ids, mask = masked_view(ids, valid, self.cfg.masking, generator)
            prediction = self.model.predictor(self.model.encoder(masked_ids, valid)[mask])
            target = self.teacher(ids, valid)[mask]
            total_align += float(alignment_loss(prediction, target))
            total_cos += float(torch.nn.functional.cosine_similarity(prediction, target, dim=-1).mean())
            batches += 1
        if batches == 0:
            raise TextJepaError("the validation split is smaller than one batch; raise --val-fraction or lower --batch")
        return {"score": -total_align / batches, "val_loss": total_align / batches, "val_cos": total_cos / batches}

    def checkpoint_tensors(self):
        online = {f"encoder.{k}": v for k, v in self.model.encoder.state_dict().items()}
        online.update({f"predictor.{k}": v for k, v in self.model.predictor.state_dict().items()})
        teacher = {f"encoder.{k}": v for k, v in self.teacher.state_dict().items()}
        return online, teacher

    def checkpoint_info(self) -> dict:
        return {"masking": dataclasses.asdict(self.cfg.masking), "regularizer": self.cfg.train.regularizer}

    def finish(self, best_path: Path) -> None:
        return None


def train_latent(cfg: LatentConfig) -> TrainResult:
    cfg.train.validate()
    cfg.masking.validate()
    cfg.model.validate()
    with training_session(cfg.train) as (device, dist, out_dir):
        with local_main_first(dist):  # caches are built once per node, then shared
            path = resolve_data(cfg.data.path, cfg.data.data_dir, RunKind.LATENT)
            tokenizer, store = load_corpus(
                path, LATENT_RECORDS, cfg.data, None, cfg.model.vocab_size, cfg.train.progress
            )
        config = dataclasses.replace(cfg.model, vocab_size=tokenizer.get_vocab_size())
        seed_everything(cfg.train.seed)
        stage = LatentStage(config, tokenizer, store, cfg, device)
        return train_on_store(stage, store, path, cfg.data, cfg.train, config.max_seq, out_dir, dist)
