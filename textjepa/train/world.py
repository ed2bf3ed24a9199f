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
from textjepa.config import FROZEN, ModelConfig, WorldConfig
from textjepa.data.batches import Batch
from textjepa.data.contract import DataContract, Field, is_validation
from textjepa.data.lines import LineStats
from textjepa.data.sources import WORLD_RECORDS, load_corpus, resolve_data
from textjepa.data.tokens import TokenStore, file_hash, stored_record_texts
from textjepa.decoders.retrieval import build_retrieval_index
from textjepa.errors import TextJepaError
from textjepa.eval.metrics import retrieval_metrics
from textjepa.eval.world import evaluate_split, show_evaluation
from textjepa.inference.world import WorldInference
from textjepa.io import RunKind
from textjepa.models.backbone import PretrainedEncoder
from textjepa.models.encoder import LEXICAL, count_parameters, pooling_weights
from textjepa.models.frozen import TARGET_MODEL_INFO, FrozenEmbedder, record_targets
from textjepa.models.heads import CONDITIONING_HEAD_KEY, WorldModel
from textjepa.models.world_inputs import action_mapping, batch_tensors
from textjepa.objectives.world_loss import WorldLoss
from textjepa.precision import full_precision
from textjepa.runtime import (
    local_main_first,
    seed_everything,
)
from textjepa.settings import Settings
from textjepa.train.debug import DebugOptions
from textjepa.train.frozen_latents import RecordLatents, record_latents
from textjepa.train.latent import start_backbone
from textjepa.train.loop import Stage, TrainResult
from textjepa.train.model_card import write_model_card
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
        pretrained: PretrainedEncoder | None = None,
    ) -> None:
        self.config, self.tokenizer, self.store, self.cfg, self.device = config, tokenizer, store, cfg, device
        self.mapping = mapping
        # --backbone-mode frozen: the encoder never trains and is its own teacher (no EMA copy); its latents of the
        # data are cached once (use_frozen_latents) and the steps train the transition and the head on them.
        self.frozen = cfg.backbone_mode == FROZEN
        self.latents: RecordLatents | None = None
        # --target-model: every record's next-turn embedding by the frozen model (record_targets), fixed; the
        # EMA teacher is then kept only as the loop's (and the files') encoder copy, and computes no target.
        self.embedder = embedder
        self.targets = targets.to(device) if targets is not None else None
        self.lr_scales = {"encoder.": cfg.encoder_lr_scale}
        self.model = WorldModel(config)
        if pretrained is not None:  # --backbone without --init-encoder: the encoder starts as the pretrained one
            self.model.encoder.load_state_dict(pretrained.state_dict())
        self.loss = WorldLoss(self.model, cfg.loss, cfg.train.seed)
        # Named as the training states of earlier versions name it, so that they resume exactly.
        self.generators = {"model.generator": self.loss.generator}
        self.teacher = None if self.frozen else copy.deepcopy(self.model.encoder)
        if init is not None:
            self._load_init(init)
        if config.pooling == LEXICAL and (init is None or init.kind != RunKind.WORLD):
            # A world checkpoint brings the weights it was trained with; a new pooling takes them from this corpus.
            weights = corpus_pooling_weights(store, cfg.data.val_fraction, cfg.train.seed, config.vocab_size)
            for encoder in self.encoders():
                encoder.set_token_weights(weights)
        self.loss.to(device)  # the model and the loss's own state (queue, temperature)
        if self.frozen:
            self.model.encoder.requires_grad_(False)
            self.fixed_prefix = "encoder."  # its weights stay as loaded: the training state keeps their digest
        else:
            self.teacher.to(device).requires_grad_(False).eval()

    def encoders(self) -> list[torch.nn.Module]:
        """The online encoder and its EMA teacher (in frozen mode the encoder alone: it is its own teacher)."""
        return [self.model.encoder] + ([self.teacher] if self.teacher is not None else [])

    def use_frozen_latents(self, precision: str, progress: bool) -> None:
        """Frozen mode: the encoder's latents of every record, computed once (or read from the cache)."""
        latents = record_latents(
            self.model.encoder, self.store, self.config.max_seq, self.device, precision, progress=progress
        )
        self.latents = latents.to(self.device)

    def _load_init(self, init: Checkpoint) -> None:
        world = self.model
        world.encoder.load_state_dict(init.module_state("encoder"))
        if init.kind == RunKind.WORLD:
            world.transition.load_state_dict(init.module_state("transition"))
            world.conditioning_head.load_state_dict(init.module_state(CONDITIONING_HEAD_KEY))
            if world.target_head is not None:  # check_target_space made sure it has one of the same space
                world.target_head.load_state_dict(init.module_state("target_head"))
        if self.teacher is not None:
            self.teacher.load_state_dict(load_teacher(init).module_state("encoder"))

    def _records(self, batch: Batch) -> torch.Tensor:
        return torch.from_numpy(batch.index).to(self.device)

    def _target(self, tensors: dict, batch: Batch) -> torch.Tensor:
        if self.targets is not None:
            return self.targets[self._records(batch)]
        if self.latents is not None:
            return self.latents.next[self._records(batch)]
        with torch.no_grad():
            return self.teacher.pooled(tensors["next_ids"], tensors["next_valid"])

    def _cached_states(self, batch: Batch) -> dict:
        """Frozen mode: the batch's context and next-turn latents from the cache (no encoder forward)."""
        if self.latents is None:
            return {}
        records = self._records(batch)
        return {"state": self.latents.context[records], "reply_state": self.latents.next[records]}

    def make_inputs(self, batch: Batch, step: int) -> dict:
        tensors = batch_tensors(batch, self.mapping, self.device)
        frozen = self.frozen or step < self.cfg.freeze_encoder_steps
        return {**tensors, **self._cached_states(batch), "target": self._target(tensors, batch), "frozen": frozen}

    def validation_metrics(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        tensors = batch_tensors(batch, self.mapping, self.device)
        cached = self._cached_states(batch)
        if cached:
            prediction = self.model.predict(cached["state"], tensors["actions"])
        else:
            prediction = self.model(tensors["ids"], tensors["valid"], tensors["actions"])
        metrics = retrieval_metrics(prediction, self._target(tensors, batch))
        return {f"val_{k}": metrics[k] for k in ("cosine_mean", "top1", "top5", "mrr")}

    def score(self, metrics: dict[str, float]) -> float:
        return metrics["val_mrr"]

    def checkpoint_tensors(self):
        """The model's tensors and the teacher's; in frozen mode none for the teacher: the encoder is its own
        teacher, and the teacher file says its encoder is the model file's (checkpoint.ENCODER_IN_ONLINE)."""
        online = dict(self.model.state_dict())
        if self.teacher is None:
            return online, {}
        teacher = {f"encoder.{k}": v for k, v in self.teacher.state_dict().items()}
        return online, teacher

    def checkpoint_info(self) -> dict:
        info = {
            "init_encoder": self.cfg.init_encoder,
            "regularizer": self.cfg.loss.regularization.regularizer,
            "infonce_weight": self.cfg.loss.infonce_weight,
            "temperature": self.cfg.loss.temperature,
            "loss": dataclasses.asdict(self.cfg.loss),
            "backbone_mode": self.cfg.backbone_mode,
        }
        if self.embedder is not None:
            info[TARGET_MODEL_INFO] = self.embedder.info()
        return info

    def finish(self, best_path: Path, precision: str) -> dict:
        """The retrieval decoder's index: the training next turns in the best checkpoint's reply space (its
        teacher's latents, or the frozen target model's embeddings), picked as everywhere by the inference core.
        Then eval-world's table for the best checkpoint on the validation batches (its baselines beside it),
        printed, put into the model card and returned as eval-world's JSON report names it."""
        world = WorldInference.load(best_path, self.device, precision, target_embedder=self.embedder)
        best = world.checkpoint
        if self.latents is not None and self.embedder is None:
            # Frozen mode: the teacher is the encoder, whose latents of every next turn are already cached.
            def reply_latents(chunk: Batch) -> torch.Tensor:
                return self.latents.next[self._records(chunk)]

            # The state of a context is its frozen latent, cached too.
            def context_states(chunk: Batch) -> torch.Tensor:
                return self.latents.context[self._records(chunk)]
        else:

            def reply_latents(chunk: Batch) -> torch.Tensor:
                return world.reply_latents(self.store, chunk)

            context_states = world.context_states

        index_path = build_retrieval_index(
            best_path,
            reply_latents,
            self.store,
            self.tokenizer,
            best.data,
            reply_texts=self._reply_texts(best.data),
            context_states=context_states,
        )
        print(f"retrieval index: {index_path}")
        train = self.cfg.train
        source = Path(best.data.source)
        # The loop's autocast is off here: the model's forwards run at `precision` by themselves, the metrics in
        # fp32, as in eval-world, so the card's table is the one eval-world prints.
        with full_precision(self.device.type):
            evaluation = evaluate_split(
                world, self.store, source, "val", train.batch, train.eval_batches, self.cfg.data.data_dir
            )
        report = show_evaluation(world, source, evaluation)
        parameters = count_parameters(self.model)
        write_model_card(best_path, self.kind, best.config, best.info, best.data, parameters, evaluation)
        return report

    def _reply_texts(self, data: DataContract) -> list[str] | None:
        """A pretrained backbone's tokenizer (an uncased WordPiece) does not decode to the text it read, so the
        retrieval decoder's replies are read back from the training file, as written; the scratch encoder's
        byte-level BPE decodes to the exact text. None where the file is gone or changed (the ids are decoded)."""
        source = Path(data.source)
        if self.config.is_scratch or not source.is_file() or file_hash(source) != self.store.corpus_hash:
            return None
        records = WORLD_RECORDS.reader(source, data.max_line_bytes, LineStats())
        texts = stored_record_texts(records, WORLD_RECORDS.fields, Field.REPLY, self.tokenizer, data.min_tokens)
        return texts if len(texts) == len(self.store) else None


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


def resolve_world_config(
    cfg: WorldConfig, overrides: dict
) -> tuple[ModelConfig, Tokenizer | None, Checkpoint | None, PretrainedEncoder | None]:
    """The model shape: from --init-encoder's checkpoint when given (arguments must agree, --backbone included),
    else the arguments (with --backbone: the backbone's shape, its tokenizer and its pretrained encoder)."""
    if not cfg.init_encoder:
        values = {k: v for k, v in overrides.items() if v is not None}
        if "max_vocab" in values:
            values["vocab_size"] = values.pop("max_vocab")
        config = dataclasses.replace(cfg.model, **values)
        pretrained, tokenizer, config = start_backbone(config, cfg.data.data_dir, overrides)
        return config, tokenizer, None, pretrained
    init = load_checkpoint(cfg.init_encoder)
    checked = {k: v for k, v in overrides.items() if v is not None}
    if init.kind == RunKind.LATENT:
        # JEPA pools nothing and has no transition: the world model chooses them (a backbone pools as it was
        # trained).
        chosen = {
            name: checked.pop(name, getattr(cfg.model, name))
            for name in ("cond_dim", "pooling", "lexical_weight", "transition")
        }
        if not init.config.is_scratch:
            if chosen["pooling"] != "mean" and "pooling" in overrides and overrides["pooling"] is not None:
                raise TextJepaError(
                    f"{init.path.name} has backbone {init.config.backbone}, which pools as it was "
                    "trained; omit --pooling"
                )
            chosen["pooling"] = "mean"
        check_shape_overrides(init.config, checked, init.path)
        config = dataclasses.replace(init.config, **chosen, actions=list(cfg.model.actions))
    else:
        check_shape_overrides(init.config, checked, init.path)
        config = init.config
    return config, init.tokenizer, init, None


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
        config, tokenizer, init, pretrained = resolve_world_config(cfg, shape_overrides or {})
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
            # A new tokenizer's size (a backbone's vocabulary is its own, already in the config).
            vocab_size = tokenizer.get_vocab_size() if config.is_scratch else config.vocab_size
            config = dataclasses.replace(config, vocab_size=vocab_size, actions=list(store.action_names))
        mapping = action_mapping(store, config.actions, str(init.path) if init else "the model")
        if embedder is not None:
            config = dataclasses.replace(config, target_dim=embedder.dim)
        seed_everything(cfg.train.seed)
        stage = WorldStage(config, tokenizer, store, cfg, device, init, mapping, embedder, targets, pretrained)
        del pretrained  # its weights are the stage's encoder now
        if stage.frozen:
            with local_main_first(dist):  # computed once per node, then read from the cache
                stage.use_frozen_latents(precision.precision, cfg.train.progress)
        debug = DebugOptions.from_settings(settings or Settings())
        return train_on_store(
            stage, store, path, cfg.data, cfg.train, config.max_seq, out_dir, dist, precision, debug, command=cfg
        )
