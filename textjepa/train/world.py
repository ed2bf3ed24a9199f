"""World-model training: state latent + action -> predicted next-turn latent, and the conditioning head.

The stage makes the inputs (contexts, actions, the teacher's next-turn latents); the loss is
objectives/world_loss.py.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from textjepa.checkpoint import Checkpoint, check_shape_overrides, load_checkpoint, load_teacher
from textjepa.config import ModelConfig, WorldConfig
from textjepa.data.batches import Batch
from textjepa.data.contract import is_validation
from textjepa.data.sources import WORLD_RECORDS, load_corpus, resolve_data
from textjepa.data.tokens import TokenStore
from textjepa.decoders.retrieval import build_retrieval_index
from textjepa.errors import TextJepaError
from textjepa.eval.metrics import retrieval_metrics
from textjepa.inference.world import WorldInference
from textjepa.io import RunKind
from textjepa.models.encoder import LEXICAL, pooling_weights
from textjepa.models.frozen import TARGET_MODEL_INFO, FrozenEmbedder, record_targets
from textjepa.models.heads import CONDITIONING_HEAD_KEY, WorldModel
from textjepa.models.world_inputs import action_mapping, batch_tensors
from textjepa.objectives.world_loss import WorldLoss
from textjepa.runtime import (
    local_main_first,
    seed_everything,
)
from textjepa.settings import Settings
from textjepa.train.debug import DebugOptions
from textjepa.train.loop import Stage, TrainResult
from textjepa.train.session import train_on_store, training_session


class WorldStage(Stage):
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
        embedder: FrozenEmbedder | None = None,
        targets: torch.Tensor | None = None,
    ) -> None:
        self.config, self.tokenizer, self.store, self.cfg, self.device = config, tokenizer, store, cfg, device
        self.mapping = mapping
        # --target-model: every record's next-turn embedding by the frozen model (record_targets), fixed; the
        # EMA teacher is then kept only as the loop's (and the files') encoder copy, and computes no target.
        self.embedder = embedder
        self.targets = targets.to(device) if targets is not None else None
        self.lr_scales = {"encoder.": cfg.encoder_lr_scale}
        self.model = WorldModel(config)
        self.loss = WorldLoss(self.model, cfg.loss, cfg.train.seed)
        # Named as the training states of earlier versions name it, so that they resume exactly.
        self.generators = {"model.generator": self.loss.generator}
        self.teacher = copy.deepcopy(self.model.encoder)
        if init is not None:
            self._load_init(init)
        if config.pooling == LEXICAL and (init is None or init.kind != RunKind.WORLD):
            # A world checkpoint brings the weights it was trained with; a new pooling takes them from this corpus.
            weights = corpus_pooling_weights(store, cfg.data.val_fraction, cfg.train.seed, config.vocab_size)
            self.model.encoder.set_token_weights(weights)
            self.teacher.set_token_weights(weights)
        self.loss.to(device)  # the model and the loss's own state (queue, temperature)
        self.teacher.to(device).requires_grad_(False).eval()

    def _load_init(self, init: Checkpoint) -> None:
        world = self.model
        world.encoder.load_state_dict(init.module_state("encoder"))
        if init.kind == RunKind.WORLD:
            world.transition.load_state_dict(init.module_state("transition"))
            world.conditioning_head.load_state_dict(init.module_state(CONDITIONING_HEAD_KEY))
            if world.target_head is not None:  # check_target_space made sure it has one of the same space
                world.target_head.load_state_dict(init.module_state("target_head"))
        self.teacher.load_state_dict(load_teacher(init).module_state("encoder"))

    def _target(self, tensors: dict, batch: Batch) -> torch.Tensor:
        if self.targets is not None:
            return self.targets[torch.from_numpy(batch.index).to(self.device)]
        with torch.no_grad():
            return self.teacher.pooled(tensors["next_ids"], tensors["next_valid"])

    def make_inputs(self, batch: Batch, step: int) -> dict:
        tensors = batch_tensors(batch, self.mapping, self.device)
        return {**tensors, "target": self._target(tensors, batch), "frozen": step < self.cfg.freeze_encoder_steps}

    def validation_metrics(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        tensors = batch_tensors(batch, self.mapping, self.device)
        prediction = self.model(tensors["ids"], tensors["valid"], tensors["actions"])
        metrics = retrieval_metrics(prediction, self._target(tensors, batch))
        return {f"val_{k}": metrics[k] for k in ("cosine_mean", "top1", "top5", "mrr")}

    def score(self, metrics: dict[str, float]) -> float:
        return metrics["val_mrr"]

    def checkpoint_tensors(self):
        online = dict(self.model.state_dict())
        teacher = {f"encoder.{k}": v for k, v in self.teacher.state_dict().items()}
        return online, teacher

    def checkpoint_info(self) -> dict:
        info = {
            "init_encoder": self.cfg.init_encoder,
            "regularizer": self.cfg.loss.regularization.regularizer,
            "infonce_weight": self.cfg.loss.infonce_weight,
            "temperature": self.cfg.loss.temperature,
            "loss": dataclasses.asdict(self.cfg.loss),
        }
        if self.embedder is not None:
            info[TARGET_MODEL_INFO] = self.embedder.info()
        return info

    def finish(self, best_path: Path) -> None:
        """The retrieval decoder's index: the training next turns in the best checkpoint's reply space (its
        teacher's latents, or the frozen target model's embeddings), picked as everywhere by the inference core."""
        world = WorldInference.load(best_path, self.device, target_embedder=self.embedder)
        best = world.checkpoint
        index_path = build_retrieval_index(
            best_path, lambda chunk: world.reply_latents(self.store, chunk), self.store, self.tokenizer, best.data
        )
        print(f"retrieval index: {index_path}")


def corpus_pooling_weights(store: TokenStore, val_fraction: float, seed: int, vocab_size: int) -> torch.Tensor:
    """Lexical pooling weights from the training split's contexts and next turns (each one a document)."""
    chunk = 1 << 16

    def chunks():
        for start in range(0, len(store), chunk):
            index = np.arange(start, min(len(store), start + chunk), dtype=np.int64)
            training = ~is_validation(index, val_fraction, seed)
            for field in store.fields.values():
                # The chunk's records are contiguous in the flat ids: one slice, then the held-out ones masked.
                lengths = field.lengths(index)
                tokens = field.ids[field.offsets[index[0]] : field.offsets[index[-1] + 1]]
                yield tokens[np.repeat(training, lengths)], lengths[training]

    return pooling_weights(chunks(), vocab_size)


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
        cond_dim = checked.pop("cond_dim", cfg.model.cond_dim)
        # JEPA pools nothing: the world model chooses its pooling.
        pooling = {name: checked.pop(name, getattr(cfg.model, name)) for name in ("pooling", "lexical_weight")}
        check_shape_overrides(init.config, checked, init.path)
        config = dataclasses.replace(init.config, cond_dim=cond_dim, **pooling, actions=list(cfg.model.actions))
    else:
        check_shape_overrides(init.config, checked, init.path)
        config = init.config
    return config, init.tokenizer, init


def check_target_space(init: Checkpoint | None, embedder: FrozenEmbedder | None) -> None:
    """A world checkpoint continues in the space it predicts in: --target-model must name the same frozen model
    (or none for the teacher's space)."""
    if init is None or init.kind != RunKind.WORLD:
        return
    recorded = init.info.get(TARGET_MODEL_INFO)
    if recorded is None and embedder is not None:
        raise TextJepaError(
            f"{init.path.name} predicts in its teacher's space; --target-model starts from a latent checkpoint or none"
        )
    if recorded is not None and (embedder is None or not embedder.is_recorded_in(recorded)):
        raise TextJepaError(
            f"{init.path.name} predicts in the space of target model {recorded.get('name')}; pass "
            f"--target-model {recorded.get('name')} to continue it"
        )


def train_world(cfg: WorldConfig, shape_overrides: dict | None = None, settings: Settings | None = None) -> TrainResult:
    """`textjepa train-world`. settings: the environment the command was started with (threads, torchrun, hub
    downloads, the loop's testing aids); none given, none set."""
    cfg.validate()
    with training_session(cfg.train, RunKind.WORLD, settings) as (device, dist, out_dir, precision):
        config, tokenizer, init = resolve_world_config(cfg, shape_overrides or {})
        config.validate()
        # --target-model: found and loaded (or refused) before any work on the data.
        embedder = FrozenEmbedder(cfg.target_model, device) if cfg.target_model else None
        check_target_space(init, embedder)
        targets = None
        with local_main_first(dist):  # caches are built once per node, then shared
            path = resolve_data(cfg.data.path, cfg.data.data_dir, RunKind.WORLD, settings)
            tokenizer, store = load_corpus(
                path, WORLD_RECORDS, cfg.data, tokenizer, config.vocab_size, cfg.train.progress
            )
            if embedder is not None:  # every record's next-turn embedding, cached beside the token store
                targets = record_targets(embedder, store, tokenizer, progress=cfg.train.progress)
        if init is None or init.kind == RunKind.LATENT:
            config = dataclasses.replace(
                config, vocab_size=tokenizer.get_vocab_size(), actions=list(store.action_names)
            )
        mapping = action_mapping(store, config.actions, str(init.path) if init else "the model")
        if embedder is not None:
            config = dataclasses.replace(config, target_dim=embedder.dim)
        seed_everything(cfg.train.seed)
        stage = WorldStage(config, tokenizer, store, cfg, device, init, mapping, embedder, targets)
        debug = DebugOptions.from_settings(settings or Settings())
        return train_on_store(
            stage, store, path, cfg.data, cfg.train, config.max_seq, out_dir, dist, precision, debug, command=cfg
        )
