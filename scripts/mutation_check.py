"""A light mutation check of the checks that guard data, access and reported numbers.

Each mutation below is one small, plausible bug in one of those checks (a search/replace of an exact source
snippet). The script applies one at a time, runs the tests that cover it (pytest -x on a named subset, -n 0) and
reports it as killed (a test failed: it names the first) or survived (every test passed: the check is unguarded).
A snippet that no longer occurs exactly once is reported as "stale" before anything runs: a refactor that moves the
code fails the check loudly instead of silently testing nothing.

    python scripts/mutation_check.py            # every mutation; a table, exit 1 unless all are killed
    python scripts/mutation_check.py --json     # the same as JSON on stdout
    python scripts/mutation_check.py --list     # the mutations and their tests, nothing run
    python scripts/mutation_check.py --only metrics-rank-axis --only auth-prefix

The source files are restored whatever happens (after each mutation, on an error, on Ctrl-C and SIGTERM): the
originals are kept in memory and in a backup folder (printed if a restore fails), and the script refuses to start
when a file it mutates has uncommitted changes. Not part of the default test command (docs/testing.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_TIMEOUT_SECONDS = 240  # per mutation; the tests of one take 5-40 s on a quiet 2-core machine


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str  # occurs exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids or files
    why: str  # what the bug would let through


AUTH_FAST = ("tests/test_bite_auth.py::test_only_the_exact_key_passes_while_loading",)
METRICS = ("tests/test_bite_metrics.py",)
ATOMIC = ("tests/test_bite_io.py", "tests/test_io.py")
ABLATION = ("tests/test_bite_ablation.py",)
TEACHER = ("tests/test_bite_teacher.py",)
RESUME = ("tests/test_bite_resume.py",)

MUTATIONS: tuple[Mutation, ...] = (
    # --- the six of issue 26's table -------------------------------------------------------------------------
    Mutation(
        "metrics-rank-axis",
        "textjepa/eval/metrics.py",
        "rank = 1 + (scores > true_scores).sum(1).float()",
        "rank = 1 + (scores > true_scores).sum(0).float()",
        METRICS,
        "every reported R@1/R@5/MRR ranks along the wrong axis",
    ),
    Mutation(
        "io-write-in-place",
        "textjepa/io.py",
        "def atomic_write_bytes(path: Path, data: bytes) -> None:\n    with atomic_write(path) as tmp:\n"
        "        tmp.write_bytes(data)",
        "def atomic_write_bytes(path: Path, data: bytes) -> None:\n    path.write_bytes(data)",
        ATOMIC,
        "a crash mid-write leaves a half-written file that is later trusted",
    ),
    Mutation(
        "auth-prefix",
        "textjepa/serve/app.py",
        "if not hmac.compare_digest(given, self.expected):",
        "if not given.startswith(self.expected):",
        AUTH_FAST,
        "the key followed by anything is accepted",
    ),
    Mutation(
        "ablation-vector-kept",
        "textjepa/inference/world.py",
        "vector=torch.zeros_like(conditioning.vector), ablated=True",
        "vector=conditioning.vector, ablated=True",
        ABLATION,
        "an ablated answer still reads the conditioning vector",
    ),
    Mutation(
        "teacher-run-id",
        "textjepa/checkpoint.py",
        '        and teacher.info.get("run_id") == checkpoint.info.get("run_id")\n',
        "",
        TEACHER,
        "another run's teacher of the same step is loaded as this checkpoint's",
    ),
    Mutation(
        "resume-rank-state",
        "textjepa/train/resume.py",
        "note = _restore_rank_state(state, sampler, stage, dist, step)",
        'note = ""',
        RESUME,
        "a resumed run restarts its data stream and RNGs (not the run it continues)",
    ),
    # --- more of the same checks -------------------------------------------------------------------------------
    Mutation(
        "metrics-ties-against",
        "textjepa/eval/metrics.py",
        "rank = 1 + (scores > true_scores).sum(1).float()",
        "rank = 1 + (scores >= true_scores).sum(1).float()",
        METRICS,
        "a tie (and the true target itself) counts against the prediction",
    ),
    Mutation(
        "metrics-top5-cut",
        "textjepa/eval/metrics.py",
        '"top5": float((rank <= 5).float().mean()),',
        '"top5": float((rank < 5).float().mean()),',
        METRICS,
        "R@5 reports R@4",
    ),
    Mutation(
        "auth-case",
        "textjepa/serve/app.py",
        "if not hmac.compare_digest(given, self.expected):",
        "if not hmac.compare_digest(given.lower(), self.expected.lower()):",
        AUTH_FAST,
        "the key in another case is accepted",
    ),
    Mutation(
        "auth-expected-prefix",
        "textjepa/serve/app.py",
        "if not hmac.compare_digest(given, self.expected):",
        "if not self.expected.startswith(given[: len(self.expected)]):",
        AUTH_FAST,
        "a prefix of the key is accepted",
    ),
    Mutation(
        "auth-whitespace-inside",
        "textjepa/serve/app.py",
        'given = b"Bearer " + token.strip() if',
        'given = b"Bearer " + b"".join(token.split()) if',
        AUTH_FAST,
        "the key with whitespace inside is accepted",
    ),
    Mutation(
        "auth-chat-only",
        "textjepa/serve/app.py",
        'if scope["type"] == "http" and scope["path"].startswith("/v1"):',
        'if scope["type"] == "http" and scope["path"].startswith("/v1/chat"):',
        AUTH_FAST,
        "the other /v1 routes are open without the key",
    ),
    Mutation(
        "io-failed-block-commits",
        "textjepa/io.py",
        "    try:\n        yield tmp\n        commit_temp(tmp, path, shared)\n    except OSError as exc:",
        "    try:\n        try:\n            yield tmp\n        finally:\n            commit_temp(tmp, path, shared)\n"
        "    except OSError as exc:",
        ATOMIC,
        "a write that failed half way is put in place",
    ),
    Mutation(
        "io-stale-temp-of-live-writer",
        "textjepa/io.py",
        "        if writer_alive(path):\n            continue\n",
        "",
        ("tests/test_io.py",),
        "a live writer's temporary file is removed under it",
    ),
    Mutation(
        "ablation-prefix-kept",
        "textjepa/decoders/hf.py",
        "return torch.zeros_like(latent) if conditioning.ablated else latent",
        "return latent",
        ABLATION,
        "an ablated LLM answer still gets the prediction's prefix",
    ),
    Mutation(
        "teacher-step",
        "textjepa/checkpoint.py",
        '        and teacher.info.get("step") == checkpoint.info.get("step")\n',
        "",
        TEACHER,
        "a teacher of another step of the run is loaded",
    ),
    Mutation(
        "resume-torch-rng",
        "textjepa/train/resume.py",
        '    torch.set_rng_state(mine["torch_rng"])\n',
        "",
        RESUME,
        "a resumed run draws other random numbers than the run it continues",
    ),
    Mutation(
        "resume-generators",
        "textjepa/train/resume.py",
        "            generators[name].set_state(generator_state)",
        "            pass",
        RESUME,
        "a resumed run's stage generators start over",
    ),
    Mutation(
        "state-checksum",
        "textjepa/checkpoint.py",
        "if hashlib.sha256(payload).hexdigest().encode() != digest:",
        "if False:",
        ("tests/test_bite_runs.py",),
        "a changed or truncated training state is loaded",
    ),
    Mutation(
        "run-folder-replaced",
        "textjepa/train/checkpointer.py",
        "    existing = earlier_run_files(out_dir, kind)\n    if not existing:\n        return\n",
        "    existing = earlier_run_files(out_dir, kind)\n    return\n",
        ("tests/test_bite_runs.py",),
        "a new run silently trains into a folder holding another",
    ),
    Mutation(
        # Not `covered.any(1) & valid` -> `covered.any(1)`: spans start inside the real tokens and padding is at the
        # end, so that `& valid` is redundant and its mutant equivalent (it survived, as it should).
        "mask-over-ratio-cap",
        "textjepa/objectives/masking.py",
        "    mask = mask & (mask.long().cumsum(1) <= cap.unsqueeze(1))\n",
        "",
        ("tests/test_models.py::test_span_mask_respects_ratio_cap_and_leaves_context_visible",),
        "masks exceed --max-masked-ratio and can hide a whole line",
    ),
    Mutation(
        "contract-context-keeps-first",
        "textjepa/data/contract.py",
        "return ids[len(ids) - limit :] if Field(role) in KEEPS_LAST else ids[:limit]",
        "return ids[:limit]",
        ("tests/test_contract.py::test_rows_are_cut_by_their_role_and_padded",),
        "a long context keeps its oldest turns instead of its latest",
    ),
    Mutation(
        "split-validation-leaks",
        "textjepa/data/batches.py",
        "index = index[~is_validation(index, self.val_fraction, self.seed)]",
        "index = index",
        ("tests/test_batches.py::test_train_batches_never_contain_validation_records",),
        "held-out records are trained on, and every validation number is inflated",
    ),
    Mutation(
        "lexical-ties-in-favour",
        "textjepa/eval/lexical.py",
        "top1 = np.where(higher < 1, np.minimum(equal, 1 - higher) / equal, 0.0)",
        "top1 = (higher < 1).astype(np.float64)",
        ("tests/test_lexical.py::test_ranking_metrics_break_ties_at_random_in_expectation",),
        "the TF-IDF baseline wins every tie, so the models look worse beside it",
    ),
    Mutation(
        "loss-queue-own-reply",
        "textjepa/objectives/world_loss.py",
        'negatives = {"negatives": queue, "excluded": keys[:, None] == queue_keys[None, :]}',
        'negatives = {"negatives": queue}',
        ("tests/test_objectives.py::test_queue_adds_earlier_targets_as_negatives_skips_a_rows_own_reply_and_wraps",),
        "a row's own reply in the queue is pushed away as a negative",
    ),
    Mutation(
        "loss-cond-term-dropped",
        "textjepa/objectives/world_loss.py",
        "total = align + cfg.infonce_weight * contrast + reg + cfg.cond_weight * structure",
        "total = align + cfg.infonce_weight * contrast + reg",
        ("tests/test_objectives.py::test_world_loss_total_is_the_weighted_sum_of_its_named_terms",),
        "the conditioning head is never trained while its loss is logged",
    ),
)


@dataclass
class Outcome:
    name: str
    path: str
    status: str  # killed, survived, timeout, error, stale
    killed_by: str = ""
    seconds: float = 0.0
    why: str = ""
    detail: str = field(default="", repr=False)


class Interrupted(Exception):
    pass


def occurrences(mutation: Mutation, text: str) -> int:
    return text.count(mutation.old)


def dirty_files(paths: list[str]) -> list[str]:
    result = subprocess.run(
        ["git", "status", "--porcelain", "--", *paths], cwd=REPO, capture_output=True, text=True, check=True
    )
    return [line[3:] for line in result.stdout.splitlines()]


def test_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TEXTJEPA_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no bytecode of a mutant is ever cached beside the source
    env["HF_HUB_OFFLINE"] = "1"
    return env


class TestRunner:
    """pytest in its own process group, so that a timeout or a signal stops it with everything it started."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def run(self, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-rfE", "-p", "no:cacheprovider", *tests]
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=test_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = self.process.communicate(timeout=timeout)
            return self.process.returncode, output
        except subprocess.TimeoutExpired:
            self.stop()
            output, _ = self.process.communicate()
            return None, output
        finally:
            self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def first_failure(output: str) -> str:
    match = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", output, re.MULTILINE)
    return match.group(1) if match else ""


def classify(mutation: Mutation, code: int | None, output: str, seconds: float) -> Outcome:
    outcome = Outcome(mutation.name, mutation.path, "error", seconds=round(seconds, 1), why=mutation.why)
    if code is None:
        outcome.status = "timeout"
    elif code == 0:
        outcome.status = "survived"
    elif code == 1:
        outcome.status, outcome.killed_by = "killed", first_failure(output) or "(a test failed)"
    else:  # 2 interrupted (e.g. an import error: the mutant does not even load), 4 usage, 5 nothing collected
        outcome.status = "killed" if code == 2 and "Error" in output else "error"
        outcome.killed_by = first_failure(output) or f"pytest exit {code}"
    if outcome.status != "killed":
        outcome.detail = output[-3000:]
    return outcome


def run(mutations: list[Mutation], baseline: bool, timeout: float, progress) -> tuple[list[Outcome], str | None]:
    paths = sorted({m.path for m in mutations})
    dirty = dirty_files(paths)
    if dirty:
        raise SystemExit(
            f"error: uncommitted changes in {', '.join(dirty)}; commit or restore them first (a mutation_check run "
            "killed with -9 can leave a mutant: git diff shows it, git checkout -- FILE restores it)"
        )
    originals = {path: (REPO / path).read_text(encoding="utf-8") for path in paths}
    stale = [m for m in mutations if occurrences(m, originals[m.path]) != 1]
    if stale:
        return [
            Outcome(m.name, m.path, "stale", why=f"the snippet occurs {occurrences(m, originals[m.path])} times")
            for m in stale
        ], None
    backup = Path(tempfile.mkdtemp(prefix="mutation_check-"))
    for path, text in originals.items():
        (backup / path).parent.mkdir(parents=True, exist_ok=True)
        (backup / path).write_text(text, encoding="utf-8")

    runner = TestRunner()

    def on_signal(number, _frame):
        runner.stop()
        raise Interrupted(signal.Signals(number).name)

    previous = {number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    outcomes: list[Outcome] = []
    baseline_failure = None
    try:
        if baseline:
            tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
            progress(f"baseline: {len(tests)} test selections, unmutated")
            started = time.monotonic()
            code, output = runner.run(tests, timeout * 3)
            if code != 0:
                baseline_failure = f"the tests fail without any mutation (exit {code}): {first_failure(output)}"
                return outcomes, baseline_failure + "\n" + output[-3000:]
            progress(f"baseline passed in {time.monotonic() - started:.0f} s")
        for mutation in mutations:
            target = REPO / mutation.path
            started = time.monotonic()
            try:
                target.write_text(originals[mutation.path].replace(mutation.old, mutation.new), encoding="utf-8")
                code, output = runner.run(mutation.tests, timeout)
            finally:
                target.write_text(originals[mutation.path], encoding="utf-8")
            outcome = classify(mutation, code, output, time.monotonic() - started)
            outcomes.append(outcome)
            progress(f"{outcome.status:8s} {mutation.name} ({outcome.seconds:.0f} s) {outcome.killed_by}")
    finally:
        for path, text in originals.items():
            target = REPO / path
            if target.read_text(encoding="utf-8") != text:
                target.write_text(text, encoding="utf-8")
        for number, handler in previous.items():
            signal.signal(number, handler)
        if any((REPO / p).read_text(encoding="utf-8") != t for p, t in originals.items()):
            print(f"error: could not restore the sources; the originals are in {backup}", file=sys.stderr)
        else:
            shutil.rmtree(backup, ignore_errors=True)
    return outcomes, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests; run nothing")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run this mutation (repeatable)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the tests first")
    parser.add_argument("--timeout", type=float, default=TEST_TIMEOUT_SECONDS, help="seconds per mutation's tests")
    args = parser.parse_args(argv)

    by_name = {m.name: m for m in MUTATIONS}
    unknown = [name for name in args.only if name not in by_name]
    if unknown:
        parser.error(f"unknown mutation {unknown[0]!r}; --list names them")
    mutations = [by_name[name] for name in args.only] if args.only else list(MUTATIONS)
    if args.list:
        for m in mutations:
            print(f"{m.name:32s} {m.path:36s} {' '.join(m.tests)}")
        return 0

    def progress(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    started = time.monotonic()
    try:
        outcomes, failure = run(mutations, not args.no_baseline, args.timeout, progress)
    except Interrupted as exc:
        print(f"error: stopped by {exc}; the sources are restored", file=sys.stderr)
        return 130
    seconds = round(time.monotonic() - started, 1)
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 2
    counts = {s: sum(o.status == s for o in outcomes) for s in ("killed", "survived", "timeout", "error", "stale")}
    if args.json:
        report = {"seconds": seconds, **counts, "mutations": [asdict(o) for o in outcomes]}
        print(json.dumps(report, indent=2))
    else:
        print(f"\n{'mutation':32s} {'result':9s} {'s':>5s}  killed by / why it matters")
        for o in outcomes:
            print(f"{o.name:32s} {o.status:9s} {o.seconds:5.0f}  {o.killed_by or o.why}")
        print(f"\n{counts['killed']} killed, {counts['survived']} survived, {counts['timeout']} timed out, "
              f"{counts['error']} errors, {counts['stale']} stale, in {seconds:.0f} s")  # fmt: skip
        for o in outcomes:
            if o.status in ("survived", "error", "timeout") and o.detail:
                print(f"\n--- {o.name} ({o.status}) ---\n{o.detail}")
    return 0 if counts["killed"] == len(outcomes) and outcomes else 1


if __name__ == "__main__":
    sys.exit(main())
