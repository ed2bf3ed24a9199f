"""Every benchmark under bench/ runs end to end in its --quick mode, as a subprocess of the real script, so that a
change of the package's API that breaks a benchmark fails the suite (bench/decoder_throughput.py once broke
unnoticed when Agent's constructor changed). The numbers of a quick run mean nothing; what is checked is that the
script finishes and writes the run_all.py interface: a JSON object with a `table` of rows, or `skipped`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, build_sentence_transformer, cli_env

sys.path.insert(0, str(REPO_ROOT / "bench"))
from run_all import discover  # noqa: E402

BENCHES = {path.stem: path for path in discover(REPO_ROOT / "bench")}
# Run by another test in its quick mode (a bench's own test, with the arguments it needs).
COVERED_ELSEWHERE = {"quality": "tests/test_quality_bench.py"}
# Arguments besides --quick that keep a run to seconds: serve_load serves the session's tiny world model instead
# of training one; precision_quality (12 training runs at full size) takes one pair set, one seed, two jobs.
EXTRA_ARGS = {
    "precision_quality": ["--sets", "stdlib", "--seeds", "0", "--jobs", "2"],
    "backbone_world": ["--batch", "8"],
}
# Benchmarks of a world model on a pretrained backbone read conftest's tiny sentence-transformers folder instead of
# all-MiniLM-L6-v2: the same code path (a local BERT-family folder), a hundredth of the compute.
TINY_BACKBONE = {"backbone_world"}
ROW_KEYS = {"metric", "value", "goal", "met", "note"}


def test_every_bench_is_run_quick_here_or_by_its_own_test():
    assert BENCHES, "no benchmarks found"
    for name in COVERED_ELSEWHERE:
        assert name in BENCHES
    for name, path in BENCHES.items():
        assert "--quick" in path.read_text(encoding="utf-8"), f"bench/{name}.py has no --quick mode"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(BENCHES) - set(COVERED_ELSEWHERE)))
def test_bench_runs_quick(name, tmp_path, request):
    args = list(EXTRA_ARGS.get(name, []))
    if name == "serve_load":
        world = request.getfixturevalue("tiny_world")
        args += ["--model", str(world["world"]), "--work-dir", str(tmp_path / "work")]
    if name == "precision_quality":
        args += ["--work-dir", str(tmp_path / "work")]
    if name in TINY_BACKBONE:
        args += ["--backbone", str(build_sentence_transformer(tmp_path / "backbone"))]
    report_path = tmp_path / f"{name}.json"
    result = subprocess.run(
        [sys.executable, str(BENCHES[name]), "--quick", "--json", str(report_path), *args],
        cwd=REPO_ROOT,
        env=cli_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert isinstance(report, dict)
    if "skipped" in report:  # e.g. gpu_step without a CUDA device: it says why
        assert report["skipped"]
        return
    assert report["table"], f"{name} wrote no table rows"
    for row in report["table"]:
        assert ROW_KEYS <= set(row), row
        assert isinstance(row["metric"], str) and row["metric"]
