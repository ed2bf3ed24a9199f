"""eval-world: the transition's predictions against the true next turns, beside two baselines.

Baselines computed in the same run on the same batches: "copy" (the context latent itself as the
prediction; for a world model trained with --target-model, the frozen model's embedding of the context, i.e. that
model's zero-shot retrieval; likewise for one trained on a frozen backbone, --backbone-mode frozen), "mean" (the
training set's mean next latent for every context) and "tf-idf" (a lexical baseline fitted on the training split,
ranking the same candidates by word overlap; eval/lexical.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from textjepa.checkpoint import check_shape_overrides
from textjepa.config import EvalConfig
from textjepa.data.batches import iter_split_batches
from textjepa.data.sources import WORLD_RECORDS, load_corpus, recorded_data
from textjepa.data.tokens import check_vocab_argument, tokenizer_hash
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


@torch.no_grad()
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
    mean_next = model.retrieval_index().mean_next_latent.to(device)
    path, data = recorded_data(cfg.data, checkpoint.data, checkpoint.kind, cfg.data_dir, settings)
    _, store = load_corpus(path, WORLD_RECORDS, data, checkpoint.tokenizer, checkpoint.config.vocab_size)
    mapping = action_mapping(store, checkpoint.config.actions, checkpoint.path.name)
    split = choose_split(cfg.split, store, checkpoint, path)
    contract = checkpoint.data
    # In a frozen target space "copy the context" is the frozen model's embedding of the context: its zero-shot
    # retrieval, labelled so.
    # So is it in frozen mode (--backbone-mode frozen): the context's latent by the frozen backbone, which is also
    # the teacher that embeds the next turns.
    zero_shot = model.target_model or (checkpoint.config.backbone if model.frozen_backbone else "")
    copy_row = f"copy ({zero_shot} zero-shot)" if zero_shot else "copy baseline"
    rows = {"world model": MetricAverager(), copy_row: MetricAverager(), "mean baseline": MetricAverager()}
    tfidf, tfidf_note = tfidf_for_checkpoint(
        checkpoint.data, checkpoint.tokenizer, checkpoint.config.vocab_size, cfg.data_dir, path, store
    )
    if tfidf is not None:
        rows["tf-idf baseline"] = MetricAverager()
    zero_shot_encoder, zero_shot_note = backbone_zero_shot(model, cfg.data_dir, device)
    zero_shot_row = f"{checkpoint.config.backbone} zero-shot"
    if zero_shot_encoder is not None:
        rows[zero_shot_row] = MetricAverager()
    for batch in iter_split_batches(
        store, cfg.batch, contract.max_seq, split, contract.val_fraction, contract.seed, max_batches=cfg.steps
    ):
        tensors = batch_tensors(batch, mapping, device)
        state, prediction = model.transition(tensors["ids"], tensors["valid"], tensors["actions"])
        target = model.reply_latents(store, batch)
        n = len(target)
        rows["world model"].add(retrieval_metrics(prediction, target), n)
        rows[copy_row].add(retrieval_metrics(model.copy_latents(store, batch, state), target), n)
        rows["mean baseline"].add(retrieval_metrics(mean_next.expand_as(target), target), n)
        if tfidf is not None:
            contexts = record_texts(store, checkpoint.tokenizer, "context", batch.index)
            replies = record_texts(store, checkpoint.tokenizer, "next", batch.index)
            rows["tf-idf baseline"].add(ranking_metrics(tfidf.scores(contexts, replies)), n)
        if zero_shot_encoder is not None:
            with autocast(device, precision.precision):
                contexts = zero_shot_encoder.pooled(tensors["ids"], tensors["valid"])
                replies = zero_shot_encoder.pooled(tensors["next_ids"], tensors["next_valid"])
            rows[zero_shot_row].add(retrieval_metrics(contexts.float(), replies.float()), n)
    if rows["world model"].rows == 0:
        raise TextJepaError(f"no {split} batches of {cfg.batch} pairs in {path}; lower --batch or use --split all")
    results = {name: _named(averager.result()) for name, averager in rows.items()}
    pairs = rows["world model"].rows
    print(f"eval-world {checkpoint.path.name} on {path} ({split} split, {pairs} pairs, batches of {cfg.batch})")
    print(format_table(results, WORLD_COLUMNS))
    print(tfidf_note)
    if zero_shot_note:
        print(zero_shot_note)
    report = {
        "model": str(checkpoint.path),
        "target_model": model.target_model or None,
        "data": str(path),
        "split": split,
        "pairs": pairs,
        "batch": cfg.batch,
        "precision": precision.precision,
        "world_model": results["world model"],
        "baseline_copy": results[copy_row],
        "baseline_mean": results["mean baseline"],
    }
    if tfidf is not None:
        report["baseline_tfidf"] = results["tf-idf baseline"]
    if zero_shot_encoder is not None:
        report["baseline_backbone_zero_shot"] = results[zero_shot_row]
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
