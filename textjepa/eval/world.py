"""eval-world: the transition's predictions against the true next turns, beside two baselines.

Baselines computed in the same run on the same batches: "copy" (the context latent itself as the
prediction; for a world model trained with --target-model, the frozen model's embedding of the context, i.e. that
model's zero-shot retrieval; likewise for one trained on a frozen backbone, --backbone-mode frozen), "mean" (the
training set's mean next latent for every context) and "tf-idf" (a lexical baseline fitted on the training split,
ranking the same candidates by word overlap; eval/lexical.py); for a world model that fine-tuned a pretrained
backbone, that backbone as it was ("<backbone> zero-shot").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from textjepa.checkpoint import check_shape_overrides
from textjepa.config import EvalConfig
from textjepa.data.batches import iter_split_batches
from textjepa.data.sources import WORLD_RECORDS, load_corpus, recorded_data
from textjepa.data.tokens import TokenStore, check_vocab_argument, tokenizer_hash
from textjepa.errors import TextJepaError
from textjepa.eval.jepa import choose_split
from textjepa.eval.lexical import ranking_metrics, record_texts, tfidf_for_checkpoint
from textjepa.eval.metrics import MetricAverager, format_table, retrieval_metrics, write_json_report
from textjepa.inference.world import WorldInference
from textjepa.models.backbone import load_backbone
from textjepa.models.world_inputs import action_mapping, batch_tensors
from textjepa.precision import autocast
from textjepa.runtime import choose_precision, configure_threads, resolve_device
from textjepa.settings import Settings

WORLD_COLUMNS = ["transition_cos", "transition_l2", "R@1", "R@5", "MRR"]
_NAMES = {"cosine_mean": "transition_cos", "l2_mean": "transition_l2", "top1": "R@1", "top5": "R@5", "mrr": "MRR"}


def _named(metrics: dict) -> dict:
    return {_NAMES.get(k, k): v for k, v in metrics.items() if k != "candidates"}


@dataclass
class WorldEvaluation:
    """eval-world's table: the world model's retrieval metrics and its baselines' (row name -> metric -> value), on
    `pairs` pairs of one split in batches of `batch` (each pair ranked against its batch's next turns)."""

    rows: dict[str, dict[str, float]]
    copy_row: str  # the copy baseline's row name (says which model's zero-shot retrieval it is)
    split: str
    pairs: int
    batch: int
    notes: list[str]  # what the tf-idf baseline was fitted on (or why it is left out); likewise the zero-shot row
    precision: str  # the compute precision of the model's forward passes
    backbone: str  # the checkpoint's backbone (its zero-shot row, where there is one)

    def report(self) -> dict:
        """The rows as eval-world's JSON report names them."""
        report = {
            "split": self.split,
            "pairs": self.pairs,
            "batch": self.batch,
            "precision": self.precision,
            "world_model": self.rows["world model"],
            "baseline_copy": self.rows[self.copy_row],
            "baseline_mean": self.rows["mean baseline"],
        }
        if "tf-idf baseline" in self.rows:
            report["baseline_tfidf"] = self.rows["tf-idf baseline"]
        if self.zero_shot_row in self.rows:
            report["baseline_backbone_zero_shot"] = self.rows[self.zero_shot_row]
        return report

    @property
    def zero_shot_row(self) -> str:
        return f"{self.backbone} zero-shot"

    def table(self) -> str:
        return format_table(self.rows, WORLD_COLUMNS)


@torch.no_grad()
def evaluate_split(
    model: WorldInference, store: TokenStore, path: Path, split: str, batch: int, max_batches: int | None, data_dir: str
) -> WorldEvaluation:
    """The world model and its baselines on the first `max_batches` batches of `split` of the pairs in `store`
    (read from `path`); the tf-idf baseline is fitted on the training split of the model's recorded data."""
    checkpoint = model.checkpoint
    device = model.device
    mean_next = model.retrieval_index().mean_next_latent.to(device)
    mapping = action_mapping(store, checkpoint.config.actions, checkpoint.path.name)
    contract = checkpoint.data
    # In a frozen target space "copy the context" is the frozen model's embedding of the context: its zero-shot
    # retrieval, labelled so.
    # So is it in frozen mode (--backbone-mode frozen): the context's latent by the frozen backbone, which is also
    # the teacher that embeds the next turns.
    zero_shot = model.target_model or (checkpoint.config.backbone if model.frozen_backbone else "")
    copy_row = f"copy ({zero_shot} zero-shot)" if zero_shot else "copy baseline"
    rows = {"world model": MetricAverager(), copy_row: MetricAverager(), "mean baseline": MetricAverager()}
    tfidf, tfidf_note = tfidf_for_checkpoint(
        checkpoint.data, checkpoint.tokenizer, checkpoint.config.vocab_size, data_dir, path, store
    )
    if tfidf is not None:
        rows["tf-idf baseline"] = MetricAverager()
    zero_shot_encoder, zero_shot_note = backbone_zero_shot(model, data_dir, device)
    zero_shot_row = f"{checkpoint.config.backbone} zero-shot"
    if zero_shot_encoder is not None:
        rows[zero_shot_row] = MetricAverager()
    for chunk in iter_split_batches(
        store, batch, contract.max_seq, split, contract.val_fraction, contract.seed, max_batches=max_batches
    ):
        tensors = batch_tensors(chunk, mapping, device)
        state, prediction = model.transition(tensors["ids"], tensors["valid"], tensors["actions"])
        target = model.reply_latents(store, chunk)
        n = len(target)
        rows["world model"].add(retrieval_metrics(prediction, target), n)
        rows[copy_row].add(retrieval_metrics(model.copy_latents(store, chunk, state), target), n)
        rows["mean baseline"].add(retrieval_metrics(mean_next.expand_as(target), target), n)
        if tfidf is not None:
            contexts = record_texts(store, checkpoint.tokenizer, "context", chunk.index)
            replies = record_texts(store, checkpoint.tokenizer, "next", chunk.index)
            rows["tf-idf baseline"].add(ranking_metrics(tfidf.scores(contexts, replies)), n)
        if zero_shot_encoder is not None:
            with autocast(device, model.precision):
                contexts = zero_shot_encoder.pooled(tensors["ids"], tensors["valid"])
                replies = zero_shot_encoder.pooled(tensors["next_ids"], tensors["next_valid"])
            rows[zero_shot_row].add(retrieval_metrics(contexts.float(), replies.float()), n)
    if rows["world model"].rows == 0:
        raise TextJepaError(f"no {split} batches of {batch} pairs in {path}; lower --batch or use --split all")
    results = {name: _named(averager.result()) for name, averager in rows.items()}
    notes = [tfidf_note] + ([zero_shot_note] if zero_shot_note else [])
    pairs = rows["world model"].rows
    return WorldEvaluation(results, copy_row, split, pairs, batch, notes, model.precision, checkpoint.config.backbone)


def evaluation_heading(model_file: Path, path: Path, evaluation: WorldEvaluation) -> str:
    return (
        f"eval-world {model_file.name} on {path} ({evaluation.split} split, {evaluation.pairs} pairs, batches of "
        f"{evaluation.batch})"
    )


def show_evaluation(model: WorldInference, data_path: Path, evaluation: WorldEvaluation) -> dict:
    """Prints eval-world's heading, table and notes for `model` on `data_path`; returns its JSON report (what
    eval-world --json writes and train-world returns at its end)."""
    print(evaluation_heading(model.checkpoint.path, data_path, evaluation))
    print(evaluation.table())
    print("\n".join(evaluation.notes))
    report = {"model": str(model.checkpoint.path), "target_model": model.target_model or None, "data": str(data_path)}
    return {**report, **evaluation.report()}


def evaluate_world(cfg: EvalConfig, settings: Settings | None = None) -> dict:
    configure_threads(settings)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    precision = choose_precision(cfg.precision, device)
    print(precision.describe())
    model = WorldInference.load(Path(cfg.model), device, precision=precision.precision)
    checkpoint = model.checkpoint
    check_shape_overrides(checkpoint.config, cfg.shape_overrides, checkpoint.path)
    if cfg.vocab:
        check_vocab_argument(cfg.vocab, checkpoint.tokenizer)
    path, data = recorded_data(cfg.data, checkpoint.data, checkpoint.kind, cfg.data_dir, settings)
    _, store = load_corpus(path, WORLD_RECORDS, data, checkpoint.tokenizer, checkpoint.config.vocab_size)
    split = choose_split(cfg.split, store, checkpoint, path)
    evaluation = evaluate_split(model, store, path, split, cfg.batch, cfg.steps, cfg.data_dir)
    report = show_evaluation(model, path, evaluation)
    if cfg.json_path:
        write_json_report(cfg.json_path, report)
    return report


def backbone_zero_shot(
    model: WorldInference, data_dir: str, device: torch.device
) -> tuple[torch.nn.Module | None, str]:
    """A world model that fine-tuned a pretrained backbone is shown beside that backbone as it was (its zero-shot
    retrieval, the same batches); with the pretrained weights no longer at hand, a note says why the row is missing.
    (Frozen, the backbone's zero-shot is the copy row already.)"""
    config = model.config
    if config.is_scratch or model.frozen_backbone or model.target_model:
        return None, ""
    try:
        encoder, tokenizer = load_backbone(config.backbone, data_dir)
    except TextJepaError as exc:
        return None, f"no {config.backbone} zero-shot row: {exc}"
    if tokenizer_hash(tokenizer) != tokenizer_hash(model.checkpoint.tokenizer):
        return None, f"no {config.backbone} zero-shot row: its tokenizer is not the checkpoint's"
    return encoder.to(device).eval(), f"{config.backbone} zero-shot: the pretrained backbone before training"
