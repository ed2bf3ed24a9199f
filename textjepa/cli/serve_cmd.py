"""`serve`: the OpenAI-compatible HTTP API (seed form: --serve <model> <vocab> [bind] [dim] ...)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import socket
import sys
from functools import partial
from pathlib import Path

from textjepa.cli.common import add_checked_shape_args, shape_overrides
from textjepa.config import ServeConfig
from textjepa.errors import TextJepaError

API_KEY_ENV = "TEXTJEPA_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    d = ServeConfig()
    p = subparsers.add_parser(
        "serve",
        help="serve a world model over an OpenAI-compatible HTTP API",
        description=(
            "Loads a world checkpoint once and serves POST /v1/chat/completions (JSON or SSE stream), "
            "POST /v1/embeddings (pooled encoder latents), GET /v1/models and GET /health. Point an OpenAI "
            "client at http://HOST:PORT/v1. /health answers 503 until the model is loaded."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="model_world_*.safetensors")
    p.add_argument("--vocab", default=None, help="tokenizer.json or vocab file; must be the model's own")
    net = p.add_argument_group("network")
    net.add_argument("--host", default=None, help=f"address to listen on (default {d.host})")
    net.add_argument("--port", type=int, default=None, help=f"port (default {d.port}; 0 picks a free one)")
    net.add_argument("--bind", default=None, metavar="HOST:PORT", help="host and port in one (the seed's form)")
    net.add_argument(
        "--api-key",
        default=None,
        help=f"require `Authorization: Bearer KEY` on /v1/* (or set {API_KEY_ENV}, which keeps it out of `ps`)",
    )
    net.add_argument("--model-id", default=d.model_id, help="the model name clients see (default %(default)s)")
    dec = p.add_argument_group("decoder")
    dec.add_argument("--decoder", default=d.decoder, help="retrieval (default, offline), transformers or llamacpp")
    dec.add_argument("--bridge", default=None, help="a trained prefix bridge for an LLM decoder")
    dec.add_argument("--decoder-model", default=None, help="LLM for the transformers/llamacpp decoders")
    dec.add_argument("--device", default=d.device, help="auto, cpu or cuda (default %(default)s)")
    lim = p.add_argument_group("limits")
    lim.add_argument(
        "--max-concurrency",
        type=int,
        default=d.max_concurrency,
        help="requests doing model work at once; more wait in a queue (default %(default)s)",
    )
    lim.add_argument(
        "--max-queue", type=int, default=d.max_queue, help="requests allowed to wait; beyond, 429 (default %(default)s)"
    )
    lim.add_argument(
        "--queue-timeout",
        type=float,
        default=d.queue_timeout,
        help="seconds a request waits for a slot before 429 (default %(default)s)",
    )
    lim.add_argument("--max-batch", type=int, default=d.max_batch, help="texts per encoder batch (default %(default)s)")
    lim.add_argument(
        "--max-body-bytes", type=int, default=d.max_body_bytes, help="larger requests get 413 (default %(default)s)"
    )
    lim.add_argument(
        "--default-max-tokens",
        type=int,
        default=d.default_max_tokens,
        help="reply length when a request gives no max_tokens (default %(default)s)",
    )
    lim.add_argument(
        "--max-tokens-limit",
        type=int,
        default=d.max_tokens_limit,
        help="largest max_tokens a request may ask for (default %(default)s)",
    )
    p.add_argument("--debug", action="store_true", help="log every request and the server's internals")
    add_checked_shape_args(p, with_bridge=True)
    p.set_defaults(run=run)


def parse_bind(text: str, default_host: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT` -> (host, port)."""
    value = text.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)", value) or re.fullmatch(r"([^:\[\]\s]*):(\d+)", value)
    if match:
        host, port = match.group(1) or default_host, match.group(2)
    elif value.isdigit():
        host, port = default_host, value
    else:
        raise TextJepaError(f"bind address {text!r} is not HOST:PORT (e.g. 127.0.0.1:8080 or 0.0.0.0:8080)")
    if not 0 <= int(port) <= 65535:
        raise TextJepaError(f"bind address {text!r}: port {port} is not in 0..65535")
    return host, int(port)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    d = ServeConfig()
    if args.bind is not None:
        if args.host is not None or args.port is not None:
            raise TextJepaError("give either --bind HOST:PORT or --host/--port, not both")
        host, port = parse_bind(args.bind, d.host)
    else:
        host = d.host if args.host is None else args.host
        port = d.port if args.port is None else args.port
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    cfg = ServeConfig(
        model=args.model,
        vocab=args.vocab,
        host=host,
        port=port,
        decoder=args.decoder,
        bridge=args.bridge,
        decoder_model=args.decoder_model,
        device=args.device,
        api_key=api_key,
        model_id=args.model_id,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        queue_timeout=args.queue_timeout,
        max_batch=args.max_batch,
        max_body_bytes=args.max_body_bytes,
        default_max_tokens=args.default_max_tokens,
        max_tokens_limit=args.max_tokens_limit,
        debug=args.debug,
        shape_overrides=shape_overrides(args),
    )
    cfg.validate()
    return cfg


def open_socket(host: str, port: int) -> socket.socket:
    """Bind here, before loading anything, so that a taken port is a clear error and port 0 has a number."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise TextJepaError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a stop may reuse it
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        reasons = {
            errno.EADDRINUSE: f"port {port} is already in use on {host} (choose another with --port or --bind)",
            errno.EACCES: f"no permission to listen on port {port} (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: f"{host} is not an address of this machine",
        }
        raise TextJepaError(reasons.get(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}")) from exc
    return sock


def load_agent(cfg: ServeConfig, device):
    from textjepa.agent import Agent

    return Agent.load(
        cfg.model,
        decoder=cfg.decoder,
        device=device,
        vocab=cfg.vocab,
        shape_overrides=cfg.shape_overrides,
        bridge=cfg.bridge,
        decoder_model=cfg.decoder_model,
    )


def run(args: argparse.Namespace) -> int:
    cfg = serve_config(args)
    if not Path(cfg.model).is_file():
        raise TextJepaError(f"model {cfg.model} not found")
    # Bind before the heavy imports, so that a taken port is reported at once. Once the HTTP loop runs,
    # /health answers 503 until the model has loaded in the background.
    sock = open_socket(cfg.host, cfg.port)
    try:
        return _serve(cfg, sock)
    finally:
        sock.close()


def _serve(cfg: ServeConfig, sock: socket.socket) -> int:
    import uvicorn

    from textjepa.runtime import configure_threads, resolve_device
    from textjepa.serve.app import create_app

    configure_threads()
    device = resolve_device(cfg.device)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    _configure_logging(cfg.debug)

    failures: list[BaseException] = []

    def on_load_error(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True  # nothing to serve: stop, and report the reason below

    app = create_app(partial(load_agent, cfg, device), cfg, on_load_error=on_load_error)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="debug" if cfg.debug else "info",
            access_log=cfg.debug,  # off by default: one log line per request costs more than a retrieval reply
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    print(f"textjepa serve: listening on {url}/v1 (model {cfg.model}, loading)", flush=True)
    server.run(sockets=[sock])
    if failures:
        exc = failures[0]
        reason = str(exc) if isinstance(exc, TextJepaError) else f"{type(exc).__name__}: {exc}"
        raise TextJepaError(f"could not load the model: {reason}")
    return 0


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:     textjepa: %(message)s"))
    logger = logging.getLogger("textjepa")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
