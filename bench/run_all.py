"""Run every benchmark under bench/ and write one JSON and one Markdown table of the results.

    python bench/run_all.py [--out bench/results] [--timeout 1800] [--only a,b] [--skip c]

A benchmark is any bench/*.py except this file and helpers starting with `_` that takes the agreed interface:
`--json PATH` writes a JSON object of its results. Each runs in its own subprocess, one after the other (they
would disturb each other's timings), with a timeout. A missing, failing or timed-out benchmark is reported
in the table, not fatal. Rows of the table come from a result's `table` list (metric, value, goal, met,
note) when it has one, else from its top-level numbers. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


# Benchmarks that take hours at their defaults run only when named in --only.
ON_REQUEST = {
    "quality": "takes hours at its default budget: run_all.py --only quality, or run it alone",
    "precision_quality": "12 training runs, bf16 ones emulated on most CPUs: run_all.py --only precision_quality",
}


def discover(bench_dir: Path) -> list[Path]:
    return sorted(p for p in bench_dir.glob("*.py") if p.name != "run_all.py" and not p.name.startswith("_"))


def has_interface(path: Path) -> bool:
    return "--json" in path.read_text(encoding="utf-8", errors="replace")


def run_one(path: Path, out_dir: Path, timeout: float) -> dict:
    json_path = out_dir / f"{path.stem}.json"
    log_path = out_dir / f"{path.stem}.log"
    json_path.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("HF_HUB_OFFLINE", "1")
    began = time.perf_counter()
    entry: dict = {"script": str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)}
    entry["load_before"] = os.getloadavg()[0]
    try:
        with log_path.open("w") as log:
            completed = subprocess.run(
                [sys.executable, str(path), "--json", str(json_path)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        entry["returncode"] = completed.returncode
        status = "ok" if completed.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        status = "timeout"
    entry["seconds"] = time.perf_counter() - began
    entry["load_after"] = os.getloadavg()[0]
    if status == "ok":
        try:
            entry["result"] = json.loads(json_path.read_text())
            if not isinstance(entry["result"], dict):
                raise ValueError("not a JSON object")
            if "skipped" in entry["result"]:
                status = "skipped"
        except (OSError, ValueError) as exc:
            status = "failed"
            entry["error"] = f"no readable JSON result ({exc})"
    if status in ("failed", "timeout"):
        lines = log_path.read_text(errors="replace").splitlines()
        entry.setdefault("error", "\n".join(lines[-15:]) or f"{status} without output")
    entry["status"] = status
    return entry


def numbers(result: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, float]]:
    """Top-level numbers (and one level of nesting) of a result without a `table`."""
    found = []
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            found.append((name, value))
        elif isinstance(value, dict) and depth < 3:
            found.extend(numbers(value, f"{name}.", depth + 1))
    return found


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(report: dict) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"{report['when']}, {report['machine']['cpus']} CPUs, torch {report['machine']['torch']}, "
        f"load average {report['machine']['load_before']:.1f} at the start. Every number is a ratio against a "
        "reference measured in the same run (see bench/README.md).",
        "",
        "| benchmark | metric | value | goal | met | note |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in report["benchmarks"].items():
        if entry["status"] != "ok":
            reason = entry.get("error", "") or entry.get("result", {}).get("skipped", "")
            reason = reason.strip().splitlines()[-1][:150] if reason.strip() else ""
            lines.append(f"| {name} | **{entry['status']}** | | | | {reason.replace('|', '/')} |")
            continue
        result = entry["result"]
        rows = result.get("table")
        if rows:
            for row in rows:
                met = {True: "yes", False: "**no**", None: ""}[row.get("met")]
                goal = row.get("goal") or ""
                note = str(row.get("note", "")).replace("|", "/")
                lines.append(f"| {name} | {row['metric']} | {format_value(row['value'])} | {goal} | {met} | {note} |")
        else:
            for key, value in numbers(result):
                lines.append(f"| {name} | {key} | {format_value(value)} | | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(BENCH_DIR / "results"), help="directory for results.json/.md and logs")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark (default %(default)s)")
    parser.add_argument("--bench-dir", default=str(BENCH_DIR), help=argparse.SUPPRESS)  # for tests
    parser.add_argument("--only", default="", help="comma-separated benchmark names to run")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names to leave out")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    import torch

    report: dict = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_before": os.getloadavg()[0],
        },
        "benchmarks": {},
    }
    for path in discover(Path(args.bench_dir)):
        name = path.stem
        if (only and name not in only) or name in skip:
            continue
        if name in ON_REQUEST and name not in only:
            report["benchmarks"][name] = {"status": "skipped", "error": ON_REQUEST[name], "script": str(path)}
            continue
        if not has_interface(path):
            report["benchmarks"][name] = {"status": "no --json interface", "script": str(path)}
            continue
        print(f"running {name} ...", flush=True)
        entry = run_one(path, out_dir, args.timeout)
        report["benchmarks"][name] = entry
        print(f"  {entry['status']} in {entry['seconds']:.0f} s", flush=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (out_dir / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
