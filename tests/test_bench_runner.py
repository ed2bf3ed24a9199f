"""bench/run_all.py runs every benchmark script, collects their JSON and tolerates broken ones."""

import json
import subprocess
import sys

from conftest import REPO_ROOT, cli_env

SCRIPTS = {
    "good.py": (
        "import argparse, json\n"
        "p = argparse.ArgumentParser(); p.add_argument('--json')\n"
        "a = p.parse_args()\n"
        "row = {'metric': 'speed ratio', 'value': 2.5, 'goal': '>= 2', 'met': True, 'note': 'n'}\n"
        "open(a.json, 'w').write(json.dumps({'ratio': 2.5, 'table': [row]}))\n"
    ),
    "plain.py": (
        "import argparse, json\n"
        "p = argparse.ArgumentParser(); p.add_argument('--json')\n"
        "open(p.parse_args().json, 'w').write(json.dumps({'tokens_per_s': 1234.5, 'inner': {'x': 1}}))\n"
    ),
    "broken.py": "import sys\n# --json\nprint('boom: something went wrong')\nsys.exit(3)\n",
    "slow.py": "import time\n# --json\ntime.sleep(60)\n",
    "legacy.py": "print('no interface here')\n",
    "_helper.py": "raise SystemExit('helpers are not run')\n",
}


def test_run_all_collects_results_and_reports_failures(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    for name, text in SCRIPTS.items():
        (bench / name).write_text(text)
    out = tmp_path / "results"
    command = [sys.executable, str(REPO_ROOT / "bench" / "run_all.py"), "--bench-dir", str(bench)]
    result = subprocess.run(
        command + ["--out", str(out), "--timeout", "5"], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "results.json").read_text())
    status = {name: entry["status"] for name, entry in report["benchmarks"].items()}
    assert status == {
        "good": "ok",
        "plain": "ok",
        "broken": "failed",
        "slow": "timeout",
        "legacy": "no --json interface",
    }
    assert "boom" in report["benchmarks"]["broken"]["error"]
    table = (out / "results.md").read_text()
    assert "| good | speed ratio | 2.5 | >= 2 | yes | n |" in table
    assert "| plain | tokens_per_s | 1,234 |" in table or "| plain | tokens_per_s | 1.23e+03 |" in table
    assert "| broken | **failed** |" in table and "| slow | **timeout** |" in table
