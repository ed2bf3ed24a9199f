"""Helpers shared by the benchmark scripts (not a benchmark itself: run_all skips files starting with `_`).

Every benchmark measures its reference in the same run, side by side, because the 2 cores are shared with
other work and absolute numbers drift; the ratios are what we report.
"""

from __future__ import annotations

import json
import operator
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

import torch  # noqa: E402

from textjepa.errors import TextJepaError  # noqa: E402

CACHE_DIR = Path(os.environ.get("TEXTJEPA_BENCH_CACHE", REPO_ROOT / "bench" / ".cache"))


def demo_paragraphs() -> Path:
    """Real text of varied length: paragraphs of the installed standard library's docstrings (built once)."""
    from textjepa.data.local_corpus import build_demo_corpus

    target = CACHE_DIR / "demo" / "stdlib_paragraphs.txt"
    if not target.is_file():
        build_demo_corpus(target.parent)
    return target


GEMM_SHAPES = [(4096, 368, 1104), (4096, 1472, 368), (4096, 368, 1472), (1024, 1024, 1024), (2048, 2048, 2048)]
# Where bf16 is emulated a matmul runs ~25x slower than fp32: smaller shapes of the same kind, one run each.
EMULATED_GEMM_SHAPES = [(512, 368, 1104), (512, 1472, 368), (512, 368, 1472), (512, 512, 512)]


def gemm_peak_flops(
    seconds_per_shape: float = 0.4,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    shapes: list[tuple[int, int, int]] | None = None,
    min_runs: int = 3,
) -> dict:
    """The best matmul FLOP/s of this machine now in `dtype`, over shapes like the model's GEMMs and square ones."""
    shapes = shapes or GEMM_SHAPES
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    best, per_shape = 0.0, {}
    with torch.inference_mode():
        for m, k, n in shapes:
            a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)
            a @ b  # warm up
            synchronize()
            runs, began = 0, time.perf_counter()
            while True:
                a @ b
                runs += 1
                synchronize()
                elapsed = time.perf_counter() - began
                if elapsed >= seconds_per_shape and runs >= min_runs:
                    break
            rate = 2.0 * m * k * n * runs / elapsed
            per_shape[f"{m}x{k}x{n}"] = rate
            best = max(best, rate)
    return {"best": best, "per_shape": per_shape, "dtype": str(dtype).removeprefix("torch.")}


def cpu_precision_paths() -> dict:
    """Which precision paths this CPU runs natively (read from its flags, as `--precision auto` does)."""
    from textjepa.precision import NATIVE_CPU_BF16_FLAGS, native_cpu_bf16_flags, read_cpu_flags, resolve_precision

    cpuinfo = read_cpu_flags()
    found = native_cpu_bf16_flags(cpuinfo)
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    return {
        "cpu": model,
        "bf16_flags_looked_for": list(NATIVE_CPU_BF16_FLAGS),
        "bf16_flags_found": found,
        "bf16_native": bool(found),
        "fp32_native": True,
        "auto_picks": resolve_precision("auto", "cpu", cpuinfo).precision,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def native_note(paths: dict) -> str:
    """How a bf16 number should be read on this machine."""
    if paths["bf16_native"]:
        return f"bf16 native ({', '.join(paths['bf16_flags_found'])})"
    return "bf16 EMULATED here (no " + "/".join(paths["bf16_flags_looked_for"]) + "): goal applies to native bf16"


def bench_threads(requested: int = 0) -> int:
    """Set and return torch's thread count: `requested`, else all cores on a quiet machine and 1 on a busy one.

    With other processes on the 2 cores, 2 threads stall at every operator's barrier (3-12x slower, worst for
    many small operators), which would measure the scheduler, not our code. The reference (GEMM peak, the
    other model) runs with the same count, so the ratios stay comparable either way.
    """
    if requested <= 0:
        cores = os.cpu_count() or 1
        requested = cores if os.getloadavg()[0] < 0.5 * cores else 1
    torch.set_num_threads(requested)
    return requested


def write_json(path: str | None, result: dict) -> None:
    text = json.dumps(result, indent=2, sort_keys=False)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
    print(text)


_COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt, "==": operator.eq}


def goal_row(metric: str, value: float, goal: float | None, direction: str = ">=", note: str = "") -> dict:
    """One line of the summary table (see bench/README.md: the `table` key of a benchmark's JSON)."""
    met = None if goal is None else bool(_COMPARE[direction](value, goal))
    shown_goal = None if goal is None else f"{direction} {goal}"
    return {"metric": metric, "value": value, "goal": shown_goal, "met": met, "note": note}


def exit_code(work: Callable[[], object]) -> int:
    """A benchmark's `main`: run `work`; a user mistake (TextJepaError) is one `error:` line and exit 1."""
    try:
        work()
    except TextJepaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
