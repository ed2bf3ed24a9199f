"""JEPA pretraining: predict the teacher's latents of masked spans from the visible rest of the line.

The stage makes the inputs (keyed span masks, teacher targets); the loss is objectives/jepa_loss.py.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from tokenizers import Tokenizer

from textjepa.config import LatentConfig, ModelConfig
from textjepa.data.batches import Batch
from textjepa.data.sources import LATENT_RECORDS, load_corpus, resolve_data
from textjepa.data.tokens import TokenStore
from textjepa.io import RunKind
from textjepa.models.backbone import PretrainedEncoder, config_for_backbone, load_backbone
from textjepa.models.heads import LatentModel
from textjepa.objectives.jepa_loss import JepaLoss
from textjepa.objectives.masking import keyed_uniforms, mask_uniform_columns, masked_view
from textjepa.objectives.terms import alignment_loss
from textjepa.runtime import (
    host_to_device,
    local_main_first,
    seed_everything,
)
from textjepa.settings import Settings
from textjepa.train.debug import DebugOptions
from textjepa.train.loop import Stage, TrainResult
from textjepa.train.session import train_on_store, training_session


class LatentStage(Stage):
    kind = RunKind.LATENT

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: Tokenizer,
        store: TokenStore,
        cfg: LatentConfig,
        device: torch.device,
        pretrained: PretrainedEncoder | None = None,
    ) -> None:
        self.config, self.tokenizer, self.store, self.cfg, self.device = config, tokenizer, store, cfg, device
        self.model = LatentModel(config)
        if pretrained is not None:  # --backbone: JEPA continues from the pretrained weights (domain adaptation)
            self.model.encoder.load_state_dict(pretrained.state_dict())
        self.model.to(device)
        self.mask_id = self.model.encoder.mask_id
        self.loss = JepaLoss(self.model, cfg.loss, cfg.train.seed)
        self.teacher = copy.deepcopy(self.model.encoder).requires_grad_(False).eval()
        self.lr_scales: dict[str, float] = {}
        # Named as the training states of earlier versions name it, so that they resume exactly.
        self.generators = {"model.generator": self.loss.generator}

    def make_inputs(self, batch: Batch, step: int) -> dict:
        ids = host_to_device(batch.ids["text"], self.device)
        valid = host_to_device(batch.valid["text"], self.device)
        # Masks keyed by (record, step, seed): the same whichever rank or world size draws the record, and
        # a resumed run masks exactly as an uninterrupted one would.
        salt = (self.cfg.train.seed + 1) * 1_000_003 + step
        uniforms = keyed_uniforms(batch.index, salt, mask_uniform_columns(self.cfg.masking))
        masked_ids, mask = masked_view(ids, valid, self.cfg.masking, uniforms=uniforms, mask_id=self.mask_id)
        with torch.no_grad():
            target = self.teacher(ids, valid)
        return {"ids": masked_ids, "valid": valid, "mask": mask, "target": target}

    def validation_metrics(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        ids = torch.from_numpy(batch.ids["text"]).to(self.device)
        valid = torch.from_numpy(batch.valid["text"]).to(self.device)
        masked_ids, mask = masked_view(ids, valid, self.cfg.masking, generator, mask_id=self.mask_id)
        prediction = self.model.predictor(self.model.encoder(masked_ids, valid)[mask])
        target = self.teacher(ids, valid)[mask]
        return {
            "val_loss": float(alignment_loss(prediction, target)),
            "val_cos": float(torch.nn.functional.cosine_similarity(prediction, target, dim=-1).mean()),
        }

    def score(self, metrics: dict[str, float]) -> float:
        return -metrics["val_loss"]

    def checkpoint_tensors(self):
        online = {f"encoder.{k}": v for k, v in self.model.encoder.state_dict().items()}
        online.update({f"predictor.{k}": v for k, v in self.model.predictor.state_dict().items()})
        teacher = {f"encoder.{k}": v for k, v in self.teacher.state_dict().items()}
        return online, teacher

    def checkpoint_info(self) -> dict:
        return {
            "masking": dataclasses.asdict(self.cfg.masking),
            "regularizer": self.cfg.loss.regularization.regularizer,
            "loss": dataclasses.asdict(self.cfg.loss),
        }


def start_backbone(
    model: ModelConfig, data_dir: str, shape_given: dict | None
) -> tuple[PretrainedEncoder | None, Tokenizer | None, ModelConfig]:
    """A run that starts a new model: its pretrained backbone and that backbone's tokenizer, with the config
    shaped as the backbone is (`shape_given`: the shape options the user gave, which must agree); for the scratch
    encoder none of them (the tokenizer is trained on the data) and the config as given."""
    if model.is_scratch:
        return None, None, model
    pretrained, tokenizer = load_backbone(model.backbone, data_dir)
    return pretrained, tokenizer, config_for_backbone(model, pretrained, shape_given)


def train_latent(cfg: LatentConfig, settings: Settings | None = None, shape_given: dict | None = None) -> TrainResult:
    """`textjepa latent`. settings: the environment the command was started with (threads, torchrun, hub
    downloads, the loop's testing aids); none given, none set. shape_given: the shape options given on the command
    line (a backbone refuses those that disagree with it)."""
    cfg.validate()
    with training_session(cfg.train, RunKind.LATENT, settings, cfg.model.dim) as (device, dist, out_dir, precision):
        # --backbone: its weights, shape and tokenizer (found, or refused, before any work on the data).
        pretrained, tokenizer, config = start_backbone(cfg.model, cfg.data.data_dir, shape_given)
        with local_main_first(dist):  # caches are built once per node, then shared
            path = resolve_data(cfg.data.path, cfg.data.data_dir, RunKind.LATENT, settings)
            tokenizer, store = load_corpus(
                path, LATENT_RECORDS, cfg.data, tokenizer, config.vocab_size, cfg.train.progress
            )
        config = dataclasses.replace(config, vocab_size=tokenizer.get_vocab_size())
        seed_everything(cfg.train.seed)
        stage = LatentStage(config, tokenizer, store, cfg, device, pretrained)
        debug = DebugOptions.from_settings(settings or Settings())
        return train_on_store(
            stage, store, path, cfg.data, cfg.train, config.max_seq, out_dir, dist, precision, debug, command=cfg
        )
