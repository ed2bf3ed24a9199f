"""Shared test helpers: run the real CLI in a subprocess, tiny shapes, a small real corpus."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The CLI runs in the test process too (run_cli), and huggingface_hub reads this once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
# Tiny models so every training test takes seconds.
TINY = ["--dim", "32", "--layers", "1", "--heads", "2", "--max-seq", "32", "--max-vocab", "300"]


def cli_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TEXTJEPA_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """The real `textjepa` command: its `main()` run in this test process, with sys.argv, the environment, the
    working directory, stdout and stderr as a subprocess would have them, and the same exit code and output.

    Why not a subprocess each time: every fresh process pays 2-3 CPU-s of imports (torch, torch._dynamo,
    transformers, scikit-learn) for under a second of tiny training, and those imports were two thirds of the
    suite's CPU time. Commands whose subject is the process itself run in one (`run_cli_process`): a server, an
    environment that changes more than textjepa's own settings (a library may read it at import), and any test
    that signals, kills or times the process (start_cli_until, torchrun) or needs it to survive a crash.
    `timeout` applies to a subprocess only."""
    if (args and str(args[0]) == "serve") or not _only_textjepa_settings_differ(env):
        return run_cli_process(*args, cwd=cwd, env=env, timeout=timeout)
    return _run_cli_in_process([str(a) for a in args], cwd, env or cli_env())


def run_cli_process(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """The real `textjepa` command in a subprocess (python -m textjepa)."""
    return subprocess.run(
        [sys.executable, "-m", "textjepa", *map(str, args)],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _only_textjepa_settings_differ(env: dict | None) -> bool:
    """Whether `env` is the tests' environment but for TEXTJEPA_* settings, which textjepa reads when a command
    starts (Settings.from_env), so a command in this process sees them as a fresh one would."""
    if env is None:
        return True
    base = cli_env()
    keys = set(base) | set(env)
    return all(key.startswith("TEXTJEPA_") or base.get(key) == env.get(key) for key in keys)


def _print_warnings_as_a_process_does() -> None:
    """Python's default warning filters, printed to (the redirected) stderr instead of recorded by pytest."""
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
        warnings.formatwarning(message, category, filename, lineno, line)
    )


def _run_cli_in_process(argv: list[str], cwd: Path | None, env: dict) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import traceback

    from textjepa.cli import main

    stdout, stderr = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True) for _ in range(2))
    saved_environ, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["textjepa", *argv]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            _print_warnings_as_a_process_does()
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: --help, --version, usage errors
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except Exception:  # what a subprocess would print before exiting with 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_environ)
    text = [stream.buffer.getvalue().decode("utf-8", "replace") for stream in (stdout, stderr)]
    return subprocess.CompletedProcess(["textjepa", *argv], int(code or 0), text[0], text[1])


def start_cli_until(
    out_dir: Path, pattern: str, *args: str, stdout=subprocess.PIPE, timeout: float = 300
) -> subprocess.Popen:
    """The real `textjepa` command started in a subprocess, returned once a file matching `pattern` is in
    `out_dir` (the moment a test interrupts it at). Fails with the command's stderr if it ends first, and kills
    it if the file does not appear within `timeout` seconds. stderr is a pipe; `stdout` is a pipe unless given."""
    process = subprocess.Popen(
        [sys.executable, "-m", "textjepa", *map(str, args)],
        env=cli_env(),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while not list(out_dir.glob(pattern)):
        if process.poll() is not None:
            pytest.fail(
                f"the command exited with {process.returncode} before {pattern} appeared:\n{process.stderr.read()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {pattern} in {out_dir} after {timeout} s:\n{process.communicate()[1]}")
        time.sleep(0.01)
    return process


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A user mistake: non-zero exit, a one-line `error:` message naming the problem, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    for needle in needles:
        assert needle.lower() in error_lines[0].lower(), error_lines[0]


def assert_openai_error(response, status: int, code: str | None = None, param: str | None = None) -> dict:
    """An OpenAI-style error body: the status, and the code and param when given; returns the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def assert_same_training_state(final: dict, expected: dict) -> None:
    """Two training states (textjepa.checkpoint.load_training_state) hold bit-identical model and teacher weights:
    what a resumed run must end with, against the same run uninterrupted."""
    import torch

    for part in ("model", "teacher"):
        if expected[part] is None:  # no EMA teacher (train-world --backbone-mode frozen)
            assert final[part] is None, part
            continue
        assert set(final[part]) == set(expected[part]), part
        for name, tensor in expected[part].items():
            assert torch.equal(final[part][name], tensor), f"{part}.{name} differs after resume"


def stop_and_resume(root: Path, steps: int, *command: str) -> dict:
    """`command` (a training run of `steps` steps, a log line every 10) run whole into root/whole, and again into
    root/stopped stopped by Ctrl-C after its first log line (between validations): it exits 130 with its state
    saved, a fresh run into its folder is refused, and `--resume auto` ends with the whole run's model, teacher and
    step, bit for bit. Returns the state the stopped run saved."""
    from textjepa.checkpoint import load_training_state

    whole, out = root / "whole", root / "stopped"
    reference = run_cli(*command, "--out-dir", whole)
    assert reference.returncode == 0, reference.stderr
    process = start_cli_until(out, "*.metrics.jsonl", *command, "--out-dir", out)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "continue with --resume auto" in stderr and "Traceback" not in stderr
    [state_file] = out.glob("*.state.pt")
    saved = load_training_state(state_file)
    assert 10 <= saved["step"] < steps, (saved["step"], stdout)
    assert_user_error(run_cli(*command, "--out-dir", out), "--resume auto", "--overwrite")  # never replaced afresh
    resumed = run_cli(*command, "--out-dir", out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {saved['step']}" in resumed.stdout
    final, expected = load_training_state(state_file), load_training_state(next(whole.glob("*.state.pt")))
    assert final["step"] == expected["step"] == steps
    assert_same_training_state(final, expected)
    return saved


WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches "
    "python encodes text into tokens and a small encoder learns to predict masked spans from context "
    "rivers carry water from mountains to the sea and cities grow along their banks"
).split()


def synthetic_lines(count: int, seed: int = 0, sep: str | None = None) -> list[str]:
    """Deterministic varied English-like lines (optionally `left<sep>right`)."""
    import random

    rng = random.Random(seed)
    lines = []
    for i in range(count):
        left = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) + f" item {i}"
        if sep is None:
            lines.append(left)
        else:
            right = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
            lines.append(f"{left}{sep}{right}")
    return lines


def main_checkpoint(directory: Path, kind: str) -> Path:
    """The one model_<kind>_<size>.safetensors in a directory (not the teacher)."""
    [path] = [p for p in directory.glob(f"model_{kind}_*.safetensors") if not p.name.endswith("_teacher.safetensors")]
    return path


TOPICS = {
    "weather": "rain falls from grey clouds and the wind is cold",
    "cooking": "boil the pasta in salted water and add the sauce",
    "music": "the guitar plays a slow melody in a minor key",
    "space": "the rocket leaves orbit and flies towards the moon",
    "garden": "plant the seeds in spring and water them daily",
    "code": "the function returns a sorted list of unique keys",
}


def pair_lines(count: int, seed: int = 0) -> list[str]:
    """Questions about a topic -> an answer about it that shares no word with the question: learnable,
    and not by copying the context."""
    import random

    rng = random.Random(seed)
    names = sorted(TOPICS)
    lines = []
    for i in range(count):
        topic = names[i % len(names)]
        words = TOPICS[topic].split()
        rng.shuffle(words)
        sep = "\t" if i % 3 else "|||"
        lines.append(f"User: tell me about {topic} please number {i}{sep}{' '.join(words[:6])}")
    return lines


def write_tiny_world_data(root: Path) -> dict:
    """The topic pairs and the text corpus the tiny world models train on (the pairs' words are in the corpus, so
    the latent stage's tokenizer covers them)."""
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(pair_lines(480)) + "\n")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(synthetic_lines(300) + [p.replace("\t", " ") for p in pair_lines(300, 1)]) + "\n")
    return {"root": root, "pairs": pairs, "corpus": corpus, "cache": root / "cache"}


def train_tiny_latent_for_world(data: dict) -> Path:
    """The tiny JEPA encoder a tiny world model starts from (30 steps)."""
    latent = run_cli(
        "latent", data["corpus"], *TINY, "--steps", "30", "--batch", "16", "--eval-every", "30",
        "--out-dir", data["root"] / "latent", "--data-dir", data["cache"], "--no-progress",
    )  # fmt: skip
    assert latent.returncode == 0, latent.stderr
    return main_checkpoint(data["root"] / "latent", "latent")


def train_world_on(data: dict, latent: Path, out_dir: Path, *world_args: str) -> dict:
    """A world model on the topic pairs with --init-encoder `latent` (60 steps); world_args come last and win."""
    world = run_cli(
        "train-world", data["pairs"], "--init-encoder", latent, "--steps", "60", "--batch", "24", "--eval-every", "30",
        "--lr", "2e-3", "--val-fraction", "0.2", "--out-dir", out_dir, "--data-dir", data["cache"], "--no-progress",
        *world_args,
    )  # fmt: skip
    assert world.returncode == 0, world.stderr
    return {**data, "latent": latent, "world": main_checkpoint(out_dir, "world"), "stdout": world.stdout}


TARGET_WIDTH = 32  # of the tiny sentence-transformers model below


def build_sentence_transformer(folder: Path, extra_texts: tuple[str, ...] = ()) -> Path:
    """A tiny random-weight sentence-transformers model saved in `folder` (its own tokenizer and config): a
    one-layer BERT of width TARGET_WIDTH, a WordPiece vocabulary of the test texts (and `extra_texts`), mean
    pooling. Saved as a downloaded model is, so it is loaded by the real code path."""
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:  # sentence-transformers >= 6 moved the modules; 3-5 have them here only
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    bert_dir = folder / "bert"
    bert_dir.mkdir(parents=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    texts = [" ".join(WORDS), *TOPICS.values(), *TOPICS, "user tell me about please number", *extra_texts]
    wordpiece.train_from_iterator(texts * 3, vocab_size=300, min_frequency=1, show_progress=False)
    wordpiece.save(str(folder / "wordpiece.json"))
    tokenizer = BertTokenizerFast(tokenizer_file=str(folder / "wordpiece.json"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=TARGET_WIDTH,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    transformer = Transformer(str(bert_dir), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(TARGET_WIDTH, "mean")], device="cpu")
    model.save(str(folder / "model"))
    return folder / "model"


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this test run shares (the run's own base folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(run_dir: Path, name: str, build: Callable[[], dict]) -> dict:
    """What `build` returns (a dict of paths and strings), built once per test run however many pytest-xdist
    workers ask for it: the first takes a file lock, builds and records the result; the others wait for the lock
    and read the record. A build that fails records nothing, so whoever asks next builds again."""
    from filelock import FileLock

    record = run_dir / f"{name}.json"
    with FileLock(str(run_dir / f"{name}.lock")):
        if record.is_file():
            saved = json.loads(record.read_text())
            return {key: Path(value["path"]) if "path" in value else value["text"] for key, value in saved.items()}
        result = build()
        record.write_text(
            json.dumps({k: {"path": str(v)} if isinstance(v, Path) else {"text": v} for k, v in result.items()})
        )
        return result


def new_shared_dir(parent: Path, name: str) -> Path:
    """A fresh folder for one of the run's shared models (a failed build's leftovers are replaced)."""
    import shutil

    path = parent / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


# The session's shared models are trained once per test run (built_once), not once per xdist worker: every test
# that only reads them shares them. Tests that write put their files in their own tmp_path, never beside them.
@pytest.fixture(scope="session")
def tiny_world_base(run_dir) -> dict:
    """The topic pairs, their corpus and the tiny latent model the session's tiny world models start from."""

    def build() -> dict:
        data = write_tiny_world_data(new_shared_dir(run_dir, "tiny-world"))
        return {**data, "latent": train_tiny_latent_for_world(data)}

    return built_once(run_dir, "tiny-world", build)


@pytest.fixture(scope="session")
def tiny_world(tiny_world_base, run_dir) -> dict:
    """One tiny world model with the default settings (and the latent model it started from) for every test that
    only reads it."""
    base = tiny_world_base

    def build() -> dict:
        return train_world_on(base, base["latent"], new_shared_dir(base["root"], "world"))

    return built_once(run_dir, "tiny-world-default", build)


# The encoder stays as pretrained, so "copy the context" cannot improve with training and the transition alone has
# to learn the question -> answer mapping. Mean pooling: these answers share no word with their questions, and
# lexical pooling (the default, tested in test_pooling.py) would hand a frozen dim-32 encoder's transition mostly
# the questions' rare words ("number 417") to learn from.
FROZEN_MEAN_WORLD_ARGS = ("--freeze-encoder-steps", "60", "--reply-contrast-weight", "0", "--pooling", "mean")


@pytest.fixture(scope="session")
def frozen_mean_world(tiny_world_base, run_dir) -> dict:
    """A tiny world model whose transition alone learned (FROZEN_MEAN_WORLD_ARGS), from the same tiny latent."""
    base = tiny_world_base

    def build() -> dict:
        out = new_shared_dir(base["root"], "frozen-mean-world")
        return train_world_on(base, base["latent"], out, *FROZEN_MEAN_WORLD_ARGS)

    return built_once(run_dir, "frozen-mean-world", build)


def train_learning_latent(root: Path, *extra: str) -> dict:
    """A tiny latent (JEPA) run that learns measurably: 80 steps on 600 lines, 10% held out (about 6 s)."""
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(synthetic_lines(600)) + "\n")
    out = root / "run"
    result = run_cli(
        "latent", corpus, *TINY, "--steps", "80", "--batch", "16", "--eval-every", "40", "--lr", "2e-3",
        "--out-dir", out, "--data-dir", root / "cache", "--val-fraction", "0.1", "--no-progress", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = main_checkpoint(out, "latent")
    return {"root": root, "corpus": corpus, "out": out, "model": model, "stdout": result.stdout}


@pytest.fixture(scope="session")
def tiny_latent(run_dir) -> dict:
    """One learning tiny latent run (train_learning_latent), shared by every test that only reads it."""
    return built_once(run_dir, "tiny-latent", lambda: train_learning_latent(new_shared_dir(run_dir, "tiny-latent")))


class ServerProcess:
    """`textjepa serve ... --port 0` with test hooks (tests/serve_hooks.py); the URL comes from the line it prints
    once the socket is bound (kept as first_line: it also states the precision)."""

    def __init__(self, args: list, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("serve_hooks.py")), *map(str, args), "--port", "0"],
            env=cli_env(**env),
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.first_line = self._first_line(timeout=60)
        assert "listening on http://" in self.first_line, self.first_line + self.logs()
        self.base = self.first_line.split("listening on ")[1].split()[0].removesuffix("/v1")

    def _first_line(self, timeout: float) -> str:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return result[0] if result else ""

    def wait_ready(self, timeout: float = 90) -> list[tuple]:
        """Polls /health until the model is loaded; returns what it said on the way ((status, body,
        Retry-After) each time). A server that dies or never gets ready fails the test with its log."""
        import httpx

        seen = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = httpx.get(f"{self.base}/health", timeout=5)
            except (httpx.TimeoutException, httpx.ConnectError):
                # A starved CPU (a busy machine) can hold one answer back, or the listening socket's backlog can
                # refuse a connection while the server is busy loading: ask again until the deadline.
                response = None
            if response is not None:
                seen.append((response.status_code, response.json(), response.headers.get("retry-after")))
                if response.status_code == 200:
                    return seen
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail("the server never became ready:\n" + self.logs())
            time.sleep(0.05)

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(20)
        finally:
            self.log.close()


# The shared server's settings (tests/test_serve.py and tests/test_chat_page.py use the same server).
SERVER_API_KEY = "test-key-123"
SERVER_MAX_BODY = 65536
SERVER_QUEUE_TIMEOUT = 2.0
SERVER_CONCURRENCY = 4
SERVER_LOAD_DELAY = 1.5


@pytest.fixture(scope="session")
def shared_server(tiny_world, tmp_path_factory) -> Iterator[ServerProcess]:
    """One `textjepa serve` of the tiny world model with an API key, limits and test hooks, for every test that
    does not change its settings. It records what /health said from the moment the socket was open until the
    model was loaded (health_history), and must shut down gracefully at the end."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    srv = ServerProcess(
        [
            tiny_world["world"],
            *("--api-key", SERVER_API_KEY, "--max-concurrency", SERVER_CONCURRENCY),
            *("--queue-timeout", SERVER_QUEUE_TIMEOUT, "--max-body-bytes", SERVER_MAX_BODY),
            *("--max-tokens-limit", 512),
            # Pinned, like the `agent` fixture its answers are compared with: `auto` resolves to bf16 on CPUs with
            # native bf16 (AMX, AVX512-BF16) and to fp32 elsewhere. tests/test_precision_paths.py runs bf16.
            *("--precision", "fp32"),
        ],
        log,
        TEXTJEPA_TEST_HOOKS="1",
        TEXTJEPA_TEST_LOAD_DELAY=str(SERVER_LOAD_DELAY),
    )
    srv.health_history = srv.wait_ready()
    yield srv
    code = srv.stop()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so supervisors see it.
    assert code in (0, -15) and "Application shutdown complete" in srv.logs(), f"exit {code}:\n{srv.logs()}"


@pytest.fixture(scope="module")
def client(shared_server) -> Iterator:
    """An httpx client of the shared server, with its API key."""
    import httpx

    headers = {"Authorization": f"Bearer {SERVER_API_KEY}"}
    with httpx.Client(base_url=shared_server.base, headers=headers, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def agent(tiny_world):
    """The tiny world model as an Agent in this process: what the shared server's answers must equal."""
    from textjepa.agent import Agent

    return Agent.load(tiny_world["world"], precision="fp32")  # the shared server's precision


@pytest.fixture(scope="module")
def hub():
    """A fake Hugging Face hub on 127.0.0.1 serving every dataset fixture (tests/hub_fixtures.py)."""
    from fake_hub import FakeHub
    from hub_fixtures import all_repos

    server = FakeHub()
    for repo, files in all_repos().items():
        for path, data in files.items():
            server.add_file(repo, path, data)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(synthetic_lines(400)) + "\n", encoding="utf-8")
    return path
