"""eval-jepa: how well the predictor recovers the teacher's latents of held-out masked spans."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from textjepa.checkpoint import Checkpoint, check_shape_overrides, load_with_teacher
from textjepa.config import EvalConfig, MaskingConfig
from textjepa.data.batches import iter_split_batches
from textjepa.data.contract import DataContract
from textjepa.data.sources import LATENT_RECORDS, load_corpus, recorded_data
from textjepa.data.tokens import TokenStore, check_vocab_argument
from textjepa.errors import TextJepaError
from textjepa.eval.metrics import MetricAverager, format_table, retrieval_metrics, write_json_report
from textjepa.io import RunKind
from textjepa.models.encoder import Encoder
from textjepa.models.heads import LatentModel
from textjepa.objectives.masking import masked_view, span_ids
from textjepa.precision import autocast
from textjepa.runtime import choose_precision, configure_threads, resolve_device
from textjepa.settings import Settings

JEPA_COLUMNS = ["cosine_mean", "l2_mean", "top1", "top5", "mrr", "mean_rank"]
JSON_NAMES = {"top1": "retrieval_top1", "top5": "retrieval_top5", "mrr": "retrieval_mrr"}


@torch.no_grad()
def jepa_metrics(
    model: LatentModel,
    teacher: Encoder,
    store: TokenStore,
    masking: MaskingConfig,
    cfg: EvalConfig,
    split: str,
    data: DataContract,
    device: torch.device,
) -> dict[str, float]:
    """Span-level metrics: predictions and targets are mean-pooled over each masked span, then each
    span's prediction has to retrieve its own target among all spans of the batch."""
    generator = torch.Generator().manual_seed(cfg.seed)
    averager = MetricAverager()
    for batch in iter_split_batches(
        store, cfg.batch, data.max_seq, split, data.val_fraction, data.seed, max_batches=cfg.steps
    ):
        ids = torch.from_numpy(batch.ids["text"]).to(device)
        valid = torch.from_numpy(batch.valid["text"]).to(device)
        masked_ids, mask = masked_view(ids, valid, masking, generator, mask_id=model.encoder.mask_id)
        # Pooled in fp32: the forwards may run under bf16 autocast (--precision bf16).
        prediction = model.predictor(model.encoder(masked_ids, valid)[mask]).float()
        target = teacher(ids, valid)[mask].float()
        span = span_ids(mask)[mask] - 1
        spans = int(span.max()) + 1
        counts = torch.zeros(spans, device=device).index_add_(0, span, torch.ones_like(span, dtype=torch.float))
        pooled_pred = torch.zeros(spans, prediction.shape[1], device=device).index_add_(0, span, prediction)
        pooled_target = torch.zeros(spans, target.shape[1], device=device).index_add_(0, span, target)
        metrics = retrieval_metrics(pooled_pred / counts[:, None], pooled_target / counts[:, None])
        averager.add(metrics, spans)
    if averager.rows == 0:
        raise TextJepaError(f"no {split} batches of {cfg.batch} lines to evaluate; lower --batch or use --split all")
    result = averager.result()
    result["spans"] = float(averager.rows)
    return result


def load_latent_models(path: Path, device: torch.device):
    checkpoint, teacher_checkpoint = load_with_teacher(path, expect_kind=RunKind.LATENT)
    model = LatentModel(checkpoint.config)
    model.encoder.load_state_dict(checkpoint.module_state("encoder"))
    model.predictor.load_state_dict(checkpoint.module_state("predictor"))
    teacher = copy.deepcopy(model.encoder)
    teacher.load_state_dict(teacher_checkpoint.module_state("encoder"))
    return checkpoint, model.to(device).eval(), teacher.to(device).eval()


def choose_split(requested: str, store: TokenStore, checkpoint: Checkpoint, path: Path | None = None) -> str:
    """auto: the held-out split of the data the model was trained on, all of any other data. The model's own data
    file changed since (its content hash differs): said, never silently evaluated as if it were the same."""
    same = store.corpus_hash == checkpoint.data.corpus_hash
    recorded = checkpoint.data.source
    if not same and path is not None and recorded and Path(path).absolute() == Path(recorded).absolute():
        consequence = (
            "so all of its records are evaluated, not a held-out split"
            if requested == "auto"
            else f"so its {requested} split is not the one the model's training held out"
        )
        print(
            f"note: {path} changed since {checkpoint.path.name} was trained on it (content hash "
            f"{checkpoint.data.corpus_hash}, now {store.corpus_hash}, {Path(path).stat().st_size} bytes); {consequence}"
        )
    if requested != "auto":
        return requested
    return "val" if same else "all"


def evaluate_jepa(cfg: EvalConfig, settings: Settings | None = None) -> dict:
    configure_threads(settings)
    device = resolve_device(cfg.device)
    precision = choose_precision(cfg.precision, device)
    print(precision.describe())
    checkpoint, model, teacher = load_latent_models(Path(cfg.model), device)
    check_shape_overrides(checkpoint.config, cfg.shape_overrides, checkpoint.path)
    if cfg.vocab:
        check_vocab_argument(cfg.vocab, checkpoint.tokenizer)
    path, data = recorded_data(cfg.data, checkpoint.data, checkpoint.kind, cfg.data_dir, settings)
    _, store = load_corpus(path, LATENT_RECORDS, data, checkpoint.tokenizer, checkpoint.config.vocab_size)
    split = choose_split(cfg.split, store, checkpoint, path)
    masking = MaskingConfig(**checkpoint.info.get("masking", {}))
    with autocast(device, precision.precision):
        trained = jepa_metrics(model, teacher, store, masking, cfg, split, checkpoint.data, device)
        torch.manual_seed(cfg.seed)
        baseline_model = LatentModel(checkpoint.config).to(device).eval()
        baseline_teacher = copy.deepcopy(baseline_model.encoder)
        untrained = jepa_metrics(baseline_model, baseline_teacher, store, masking, cfg, split, checkpoint.data, device)
    print(f"eval-jepa {checkpoint.path.name} on {path} ({split} split, {int(trained['spans'])} masked spans)")
    print(format_table({"trained": trained, "untrained baseline": untrained}, JEPA_COLUMNS))
    report = {
        "model": str(checkpoint.path),
        "data": str(path),
        "split": split,
        "precision": precision.precision,
        "trained": _rename(trained),
        "untrained_baseline": _rename(untrained),
    }
    if cfg.json_path:
        write_json_report(cfg.json_path, report)
    return report


def _rename(metrics: dict) -> dict:
    return {JSON_NAMES.get(k, k): v for k, v in metrics.items()}
