"""Peak memory of `textjepa latent` on a corpus and on the same corpus 10x larger (goal: ratio <= 1.2).

Each run is a fresh `python -m textjepa latent` subprocess with an empty cache directory, so the peak
covers everything memory could grow with: reading lines, training the tokenizer (a bounded sample),
tokenising into the memory-mapped token store, sampling batches, validating and saving. Peak RSS comes from
the kernel's accounting of the finished child (wait4 ru_maxrss). The corpus is the standard-library
docstring paragraphs; the large one repeats it 10 times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, demo_paragraphs, goal_row, write_json  # noqa: E402

SHAPE = ["--dim", "128", "--layers", "2", "--heads", "4", "--max-seq", "64", "--max-vocab", "4000"]


def peak_rss_of_latent(corpus: Path, work: Path, steps: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "textjepa", "latent", str(corpus), *SHAPE, "--steps", str(steps)]
    command += ["--batch", "32", "--eval-every", str(steps), "--eval-batches", "4", "--no-progress"]
    command += ["--out-dir", str(work / "out"), "--data-dir", str(work / "cache")]
    began = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - began
    stdout, stderr = process.stdout.read().decode(), process.stderr.read().decode()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"latent failed on {corpus}: {stderr[-2000:]}")
    return {
        "peak_rss_mib": usage.ru_maxrss / 1024,  # ru_maxrss is in KiB on Linux
        "seconds": seconds,
        "corpus_bytes": corpus.stat().st_size,
        "summary": next((line for line in stdout.splitlines() if "used" in line), ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--steps", type=int, default=20, help="training steps of each run")
    parser.add_argument("--factor", type=int, default=10, help="how many times larger the big corpus is")
    parser.add_argument("--quick", action="store_true", help="the smallest run (seconds): 2 steps, a 2x corpus")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.factor = 2, 2
    base = demo_paragraphs()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = tmp / "big.txt"
        text = base.read_bytes()
        with big.open("wb") as handle:
            for _ in range(args.factor):
                handle.write(text)
        small_run = peak_rss_of_latent(base, tmp / "small", args.steps)
        big_run = peak_rss_of_latent(big, tmp / "big", args.steps)
    ratio = big_run["peak_rss_mib"] / small_run["peak_rss_mib"]
    write_json(
        args.json,
        {
            "benchmark": "memory_scaling",
            "factor": args.factor,
            "small": small_run,
            "large": big_run,
            "peak_rss_ratio": ratio,
            "table": [
                goal_row(
                    f"memory: peak RSS of latent, {args.factor}x corpus / 1x",
                    ratio,
                    1.2,
                    direction="<=",
                    note=f"{big_run['peak_rss_mib']:.0f} vs {small_run['peak_rss_mib']:.0f} MiB; "
                    f"{big_run['corpus_bytes'] / 1e6:.1f} vs {small_run['corpus_bytes'] / 1e6:.1f} MB of text",
                )
            ],
        },
    )


if __name__ == "__main__":
    main()
