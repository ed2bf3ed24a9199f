"""Does quality hold in bf16? The same pipeline in fp32 and in bf16, same seeds, held-out metrics side by side.

    python bench/precision_quality.py [--sets stdlib jargon] [--seeds 0 1 2] [--jepa-steps 60] [--world-steps 50]
                                      [--jobs 3] [--json PATH] [--resume]
    python bench/precision_quality.py --quick     # tiny shapes and step counts: a smoke run of the plumbing
    python bench/precision_quality.py --table-only --json PATH

Issue 12 item 2: "on the demo data and one other corpus, bf16 and fp32 runs with the same seeds reach held-out
metrics (eval-jepa, eval-world R@1/MRR) within the seed-to-seed spread of fp32 (3 seeds each)".

For each pair set (bench/_pairsets.py: `stdlib` is the demo's data, `jargon` the Jargon File, split by key
with no text shared between the splits), each seed and each precision, the real CLI runs in subprocesses:

1. `textjepa latent` on the set's JEPA text: for stdlib the demo's docstring paragraphs of the training
   modules, for the other sets the next turns of the training split, one per line;
2. `textjepa train-world --init-encoder` that encoder on the set's training pairs;
3. `textjepa eval-jepa` of the encoder on held-out text: the next turns of the test split (masked-span
   cosine, in-batch span retrieval top-1 and MRR, masking seed fixed);
4. `textjepa eval-world` of the world model on the test pairs: the true next turn ranked among the
   `--candidates` next turns of its batch (R@1, R@5, MRR).

Every command of a run gets `--precision` of the run and otherwise identical flags (shape, step counts,
batches, seed); evaluation runs in the precision the model was trained in. Step counts are fixed (not a time
budget) so fp32 and bf16 do exactly the same work. Runs are independent (each has its own token cache), so
`--jobs` of them run side by side, the slow precision first.

Where the CPU has no native bf16 (no avx512_bf16 / amx_bf16: an AVX2 machine), bf16 is emulated by PyTorch's
reference kernels, ~10-20x slower per step than fp32: the step counts are sized for that, and the report
says which it was. The table gives per set and metric the fp32 mean, its min..max over seeds and the 95%
t-interval, the bf16 mean and each bf16 seed, and whether the bf16 mean lies within fp32's min..max.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from _common import CACHE_DIR, REPO_ROOT, cpu_precision_paths, exit_code, goal_row, native_note
from _pairsets import SET_NAMES, SetFiles, build_set
from quality import DEMO_SHAPE, QUICK_SHAPE, Shape, main_checkpoint, quick_subset, write_report

from textjepa.errors import TextJepaError

PRECISIONS = ("fp32", "bf16")
# (report key, label, source command, key in that command's JSON)
METRICS = (
    ("jepa_cos", "eval-jepa cosine", "eval_jepa", "cosine_mean"),
    ("jepa_top1", "eval-jepa top-1", "eval_jepa", "retrieval_top1"),
    ("jepa_mrr", "eval-jepa MRR", "eval_jepa", "retrieval_mrr"),
    ("world_r1", "eval-world R@1", "eval_world", "R@1"),
    ("world_r5", "eval-world R@5", "eval_world", "R@5"),
    ("world_mrr", "eval-world MRR", "eval_world", "MRR"),
)
TABLE_METRICS = ("jepa_cos", "jepa_top1", "jepa_mrr", "world_r1", "world_mrr")  # what the issue asks for


# ---------------------------------------------------------------- running the CLI


def run_textjepa(args: list[str], log: Path, threads: int) -> float:
    """Run `python -m textjepa ARGS` (this checkout's code) with its output in `log`; its own CPU seconds
    (from wait4, so runs side by side do not count each other)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(TEXTJEPA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    with log.open("a") as handle:
        handle.write(f"$ textjepa {' '.join(args)}\n")
        handle.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "textjepa", *args], stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise TextJepaError(f"textjepa {args[0]} failed (exit {process.returncode}); see {log}")
    return usage.ru_utime + usage.ru_stime


def reply_lines(pairs_file: Path, target: Path) -> Path:
    """The next turns of a pair file, one per line (already escaped there: one record per line)."""
    lines = [line.split("\t", 1)[1] for line in pairs_file.read_text(encoding="utf-8").splitlines()]
    write_text(target, "\n".join(lines) + "\n")
    return target


def write_text(path: Path, text: str) -> None:
    from textjepa.data.tokens import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


class Corpus:
    """One pair set's files for the pipeline: JEPA training text, held-out JEPA text, train and test pairs."""

    def __init__(self, files: SetFiles, jepa_train: Path, jepa_test: Path) -> None:
        self.name, self.train, self.test = files.name, files.train, files.test
        self.jepa_train, self.jepa_test = jepa_train, jepa_test

    def describe(self) -> dict:
        def count(path: Path) -> int:
            return sum(1 for _ in path.open(encoding="utf-8"))

        return {
            "train_pairs_file": str(self.train),
            "test_pairs_file": str(self.test),
            "jepa_train_file": str(self.jepa_train),
            "jepa_test_file": str(self.jepa_test),
            "train_pairs": count(self.train),
            "test_pairs": count(self.test),
            "jepa_train_lines": count(self.jepa_train),
            "jepa_test_lines": count(self.jepa_test),
        }


def run_pipeline(corpus: Corpus, seed: int, precision: str, settings: dict, folder: Path) -> dict:
    """latent -> train-world --init-encoder -> eval-jepa -> eval-world in `precision`; the result is written
    to `folder/result.json` last, so --resume can trust a finished run."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)  # our own scratch folder: a fresh run each time
    folder.mkdir(parents=True)
    log, cache, threads = folder / "commands.log", folder / "cache", settings["threads"]
    shape = Shape(**settings["shape"])
    began = time.perf_counter()
    common = ["--seed", str(seed), "--precision", precision, "--data-dir", str(cache)]
    training = ["--no-progress", *common]
    jepa_steps, world_steps = settings["jepa_steps"], settings["world_steps"]
    cpu: dict[str, float] = {}
    cpu["latent"] = run_textjepa(
        ["latent", str(corpus.jepa_train), *shape.args(), "--batch", str(shape.jepa_batch), "--steps", str(jepa_steps),
         "--eval-every", str(jepa_steps), "--out-dir", str(folder / "latent"), *training],
        log, threads,
    )  # fmt: skip
    latent = main_checkpoint(folder / "latent", "latent")
    # train-world validates on whole batches: a small file holds out more than the default 5% (as quality.py).
    pairs = sum(1 for _ in corpus.train.open(encoding="utf-8"))
    val_fraction = 0.05 if 0.05 * pairs >= shape.world_batch else round(1.5 * shape.world_batch / pairs, 3)
    cpu["train_world"] = run_textjepa(
        ["train-world", str(corpus.train), "--init-encoder", str(latent), "--batch", str(shape.world_batch),
         "--val-fraction", str(val_fraction), "--steps", str(world_steps), "--eval-every", str(world_steps),
         "--out-dir", str(folder / "world"), *training],
        log, threads,
    )  # fmt: skip
    world = main_checkpoint(folder / "world", "world")
    cpu["eval_jepa"] = run_textjepa(
        ["eval-jepa", str(latent), str(corpus.jepa_test), "--split", "all", "--steps", str(settings["jepa_eval_steps"]),
         "--batch", str(settings["jepa_eval_batch"]), "--json", str(folder / "eval_jepa.json"), *common],
        log, threads,
    )  # fmt: skip
    cpu["eval_world"] = run_textjepa(
        ["eval-world", str(world), str(corpus.test), "--split", "all", "--batch", str(settings["candidates"]),
         "--steps", "1000000", "--json", str(folder / "eval_world.json"), *common],
        log, threads,
    )  # fmt: skip
    reports = {
        "eval_jepa": json.loads((folder / "eval_jepa.json").read_text())["trained"],
        "eval_world": json.loads((folder / "eval_world.json").read_text())["world_model"],
    }
    world_report = json.loads((folder / "eval_world.json").read_text())
    if world_report.get("precision") != precision:
        raise TextJepaError(f"eval-world ran in {world_report.get('precision')}, not {precision}: see {log}")
    result = {key: float(reports[source][field]) for key, _, source, field in METRICS}
    result.update(
        copy_r1=float(world_report["baseline_copy"]["R@1"]),
        pairs_ranked=world_report["pairs"],
        cpu_seconds={k: round(v, 1) for k, v in cpu.items()},
        wall_seconds=round(time.perf_counter() - began, 1),
    )
    write_report(folder / "result.json", result)
    return result


# ---------------------------------------------------------------- statistics and output


def t_half_width(values: list[float]) -> float | None:
    """Half-width of the 95% t-interval of the mean (None with fewer than two values)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def compare(runs: dict) -> dict:
    """Per metric: fp32 mean, min, max, 95% t half-width; bf16 mean and per seed; whether the bf16 mean lies
    within fp32's min..max over seeds (and within its t-interval). Only seeds finished in both precisions."""
    seeds = sorted(set(runs.get("fp32", {})) & set(runs.get("bf16", {})), key=int)
    out: dict = {"seeds": [int(s) for s in seeds], "metrics": {}}
    if not seeds:
        return out
    for key, label, _, _ in METRICS:
        fp32 = [runs["fp32"][s][key] for s in seeds]
        bf16 = [runs["bf16"][s][key] for s in seeds]
        fp32_mean, bf16_mean = sum(fp32) / len(fp32), sum(bf16) / len(bf16)
        half = t_half_width(fp32)
        out["metrics"][key] = {
            "label": label,
            "fp32_mean": fp32_mean,
            "fp32_min": min(fp32),
            "fp32_max": max(fp32),
            "fp32_ci95": half,
            "fp32_per_seed": fp32,
            "bf16_mean": bf16_mean,
            "bf16_ci95": t_half_width(bf16),
            "bf16_per_seed": bf16,
            "bf16_minus_fp32": bf16_mean - fp32_mean,
            "bf16_mean_within_fp32_range": min(fp32) <= bf16_mean <= max(fp32),
            "bf16_mean_within_fp32_ci95": None if half is None else abs(bf16_mean - fp32_mean) <= half,
        }
    return out


def markdown_table(name: str, comparison: dict, info: dict) -> str:
    seeds = ", ".join(map(str, comparison["seeds"]))
    lines = [
        f"**{name}** ({info['train_pairs']} training pairs, {info.get('pairs_ranked', '?')} held-out pairs ranked in "
        f"batches of {info['candidates']}; eval-jepa on {info['jepa_test_lines']} held-out lines; seeds {seeds})",
        "",
        "| metric | fp32 mean | fp32 min..max | fp32 95% CI | bf16 mean | bf16 per seed | bf16 - fp32 "
        "| bf16 in fp32 range |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in TABLE_METRICS:
        row = comparison["metrics"].get(key)
        if not row:
            continue
        half = row["fp32_ci95"]
        ci = f"± {half:.3f}" if half is not None else "-"
        per_seed = " / ".join(f"{v:.3f}" for v in row["bf16_per_seed"])
        inside = "yes" if row["bf16_mean_within_fp32_range"] else "**no**"
        lines.append(
            f"| {row['label']} | {row['fp32_mean']:.3f} | {row['fp32_min']:.3f}..{row['fp32_max']:.3f} | {ci} "
            f"| {row['bf16_mean']:.3f} | {per_seed} | {row['bf16_minus_fp32']:+.3f} | {inside} |"
        )
    return "\n".join(lines)


def text_table(name: str, comparison: dict) -> str:
    lines = [
        f"\n{name} (seeds {', '.join(map(str, comparison['seeds']))})",
        f"{'metric':20s}{'fp32 mean':>10s}{'fp32 range':>16s}{'fp32 CI':>9s}{'bf16 mean':>10s}"
        f"{'bf16 per seed':>24s}{'in range':>10s}",
    ]
    for key in TABLE_METRICS:
        row = comparison["metrics"].get(key)
        if not row:
            continue
        half = "-" if row["fp32_ci95"] is None else f"±{row['fp32_ci95']:.3f}"
        lines.append(
            f"{row['label']:20s}{row['fp32_mean']:10.3f}{row['fp32_min']:>8.3f}..{row['fp32_max']:.3f}{half:>9s}"
            f"{row['bf16_mean']:10.3f}{' / '.join(f'{v:.3f}' for v in row['bf16_per_seed']):>24s}"
            f"{'yes' if row['bf16_mean_within_fp32_range'] else 'NO':>10s}"
        )
    return "\n".join(lines)


def print_tables(report: dict) -> None:
    config = report["config"]
    print(
        f"\n{config['jepa_steps']} JEPA + {config['world_steps']} world steps, shape {config['shape']}; "
        f"{report['machine']['note']}"
    )
    for name, result in report["sets"].items():
        if result.get("comparison", {}).get("seeds"):
            print(text_table(name, result["comparison"]))
    print()
    for name, result in report["sets"].items():
        if result.get("comparison", {}).get("seeds"):
            print(markdown_table(name, result["comparison"], result["info"]) + "\n")


def goal_rows(report: dict) -> list[dict]:
    rows = []
    for name, result in report["sets"].items():
        for key in TABLE_METRICS:
            row = result.get("comparison", {}).get("metrics", {}).get(key)
            if row:
                note = f"fp32 {row['fp32_min']:.3f}..{row['fp32_max']:.3f} over seeds {result['comparison']['seeds']}"
                rows.append(
                    goal_row(
                        f"{name}: {row['label']} bf16 mean within fp32 seed range",
                        round(row["bf16_mean"], 4),
                        None,
                        note=note + ("" if row["bf16_mean_within_fp32_range"] else " (outside)"),
                    )
                )
                rows[-1]["met"] = row["bf16_mean_within_fp32_range"]
    return rows


# ---------------------------------------------------------------- the run


def prepare_corpora(args: argparse.Namespace, work: Path) -> dict[str, Corpus]:
    corpora = {}
    for name in args.sets:
        files = build_set(name, Path(args.cache_dir))
        folder = work / "sets" / name
        if args.quick:
            files = quick_subset(files, folder / "quick", 400, 2 * args.candidates)
        if name == "stdlib":  # the demo's JEPA text: docstring paragraphs of the training modules only
            jepa_train = Path(args.cache_dir) / "sets" / "stdlib" / "jepa_paragraphs.txt"
            if args.quick:
                lines = jepa_train.read_text(encoding="utf-8").splitlines(keepends=True)[:400]
                jepa_train = folder / "jepa_train.txt"
                write_text(jepa_train, "".join(lines))
        else:
            jepa_train = reply_lines(files.train, folder / "jepa_train.txt")
        corpora[name] = Corpus(files, jepa_train, reply_lines(files.test, folder / "jepa_test.txt"))
    return corpora


def run(args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    work = Path(args.work_dir) / ("quick" if args.quick else "")
    work.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else work / "precision_quality.json"
    shape = QUICK_SHAPE if args.quick else dataclasses.replace(DEMO_SHAPE, world_batch=args.world_batch)
    settings = {  # what must agree for --resume to continue a report
        "jepa_steps": args.jepa_steps,
        "world_steps": args.world_steps,
        "shape": vars(shape),
        "candidates": args.candidates,
        "jepa_eval_steps": args.jepa_eval_steps,
        "jepa_eval_batch": args.jepa_eval_batch,
        "threads": args.threads,
        "quick": args.quick,
    }
    paths = cpu_precision_paths()
    report: dict = {"benchmark": "precision_quality", "config": dict(settings), "sets": {}}
    if args.resume and json_path.is_file():
        previous = json.loads(json_path.read_text())
        differs = [k for k, v in settings.items() if previous.get("config", {}).get(k) != v]
        if differs:
            raise TextJepaError(f"--resume: {json_path} was run with other settings ({', '.join(differs)})")
        report = previous
        print(f"resuming {json_path}", flush=True)
    report["machine"] = {**paths, "note": native_note(paths), "load_average_start": os.getloadavg()[0]}
    report["config"].update(sets=args.sets, seeds=args.seeds, jobs=args.jobs, precisions=args.precisions)
    print(f"{native_note(paths)}; {args.jepa_steps} JEPA + {args.world_steps} world steps", flush=True)

    corpora = prepare_corpora(args, work)
    for name, corpus in corpora.items():
        entry = report["sets"].setdefault(name, {"runs": {}})
        entry["info"] = {**corpus.describe(), "candidates": args.candidates}
        if corpus.describe()["test_pairs"] < args.candidates:
            raise TextJepaError(f"{name}: fewer than {args.candidates} test pairs; lower --candidates")

    lock = threading.Lock()

    def record(name: str, seed: int, precision: str, result: dict) -> None:
        with lock:
            entry = report["sets"][name]
            entry["runs"].setdefault(precision, {})[str(seed)] = result
            entry["info"]["pairs_ranked"] = result["pairs_ranked"]
            entry["comparison"] = compare(entry["runs"])
            report["table"] = goal_rows(report)
            report["seconds"] = round(time.perf_counter() - began, 1)
            write_report(json_path, report)
        shown = ", ".join(f"{key}={result[key]:.3f}" for key in TABLE_METRICS)
        print(
            f"[{time.perf_counter() - began:6.0f}s] {name:7s} seed={seed} {precision}: {shown} "
            f"(CPU {sum(result['cpu_seconds'].values()):.0f} s, wall {result['wall_seconds']:.0f} s)",
            flush=True,
        )

    # The slow runs first (bf16 where it is emulated), so that the runs side by side end together.
    units = [
        (name, seed, p) for p in ("bf16", "fp32") if p in args.precisions for seed in args.seeds for name in args.sets
    ]
    todo = []
    for name, seed, precision in units:
        folder = work / "runs" / name / f"seed{seed}-{precision}"
        finished = folder / "result.json"
        if args.resume and finished.is_file():
            record(name, seed, precision, json.loads(finished.read_text()))
        else:
            todo.append((name, seed, precision, folder))
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    futures = {
        pool.submit(run_pipeline, corpora[name], seed, precision, settings, folder): (name, seed, precision)
        for name, seed, precision, folder in todo
    }
    try:
        for future in as_completed(futures):
            record(*futures[future], future.result())
    finally:  # after a failure, wait only for the runs already started (their results stay usable)
        pool.shutdown(wait=True, cancel_futures=True)

    report["seconds"] = round(time.perf_counter() - began, 1)
    write_report(json_path, report)
    print_tables(report)
    print(f"report: {json_path} ({report['seconds']:.0f} s)")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["stdlib", "jargon"], choices=SET_NAMES, help="pair sets")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds, each run in both precisions")
    parser.add_argument(
        "--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS,
        help="precisions to run now (default both); runs of the other one can come from an earlier --resume report",
    )  # fmt: skip
    parser.add_argument("--jepa-steps", type=int, default=60, help="latent steps of every run (default 60)")
    parser.add_argument("--world-steps", type=int, default=50, help="train-world steps of every run (default 50)")
    parser.add_argument("--world-batch", type=int, default=32, help="train-world pairs per step (default 32)")
    parser.add_argument("--candidates", type=int, default=256, help="eval-world candidates per ranking (default 256)")
    parser.add_argument("--jepa-eval-steps", type=int, default=5, help="eval-jepa batches (default 5)")
    parser.add_argument("--jepa-eval-batch", type=int, default=64, help="eval-jepa lines per batch (default 64)")
    parser.add_argument("--jobs", type=int, default=6, help="runs side by side (default 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, steps and sets: a smoke run")
    parser.add_argument("--cache-dir", default=str(CACHE_DIR / "quality"), help="pair sets (built once)")
    parser.add_argument("--work-dir", default=str(CACHE_DIR / "precision_quality"), help="runs and logs")
    parser.add_argument("--json", default=None, metavar="PATH", help="the report (default WORK_DIR/...json)")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs of the report at --json")
    parser.add_argument("--table-only", action="store_true", help="print the tables of the report at --json")
    args = parser.parse_args(argv)
    if args.quick:
        given = sys.argv[1:] if argv is None else argv
        args.seeds = args.seeds if "--seeds" in given else args.seeds[:2]
        args.jepa_steps, args.world_steps = min(args.jepa_steps, 8), min(args.world_steps, 8)
        args.candidates, args.jepa_eval_steps, args.jepa_eval_batch = min(args.candidates, 32), 2, 16
    if min(args.jepa_steps, args.world_steps, args.world_batch, args.jobs, args.threads, args.jepa_eval_steps) < 1:
        parser.error("step counts, batches, --jobs and --threads must be at least 1")
    if args.candidates < 2:
        parser.error("--candidates must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_code(lambda: work(args))


def work(args: argparse.Namespace) -> None:
    if args.table_only:
        path = Path(args.json or Path(args.work_dir) / "precision_quality.json")
        if not path.is_file():
            raise TextJepaError(f"no report at {path}")
        print_tables(json.loads(path.read_text()))
    else:
        run(args)


if __name__ == "__main__":
    sys.exit(main())
