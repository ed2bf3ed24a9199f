"""`serve`: the OpenAI-compatible HTTP API (seed form: --serve <model> <vocab> [bind] [dim] ...)."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import re
import socket
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from textjepa.cli.common import add_command, add_shape_checks, shape_checks
from textjepa.config import ServeConfig
from textjepa.errors import TextJepaError
from textjepa.io import folder_given_as_file
from textjepa.settings import Settings

AgentLoader = Callable[[ServeConfig, Any, Settings], Any]  # (config, device, settings) -> Agent


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "serve",
        ServeConfig(),
        run,
        help="serve a world model over an OpenAI-compatible HTTP API",
        description=(
            "Loads a world checkpoint once and serves POST /v1/chat/completions (JSON or SSE stream), "
            "POST /v1/embeddings (pooled encoder latents), POST /v1/textjepa/inspect (the training replies nearest "
            "to the prediction), GET /v1/models, GET /health, and a chat page at GET /. Point an OpenAI "
            "client at http://HOST:PORT/v1, a browser at http://HOST:PORT/. /health answers 503 until the model "
            "is loaded."
        ),
    )
    # Not a setting of its own: the seed's way to give --host and --port in one.
    parser.add_argument("--bind", default=None, metavar="HOST:PORT", help="host and port in one (the seed's form)")
    add_shape_checks(parser, with_cond_head=True)


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


def serve_config(cfg: ServeConfig, args: argparse.Namespace, settings: Settings) -> ServeConfig:
    """The options, with --bind split into host and port, the API key from the environment when not given,
    and the shape checks; validated."""
    changes: dict = {"shape_overrides": shape_checks(args)}
    if args.bind is not None:
        if hasattr(args, "host") or hasattr(args, "port"):
            raise TextJepaError("give either --bind HOST:PORT or --host/--port, not both")
        changes["host"], changes["port"] = parse_bind(args.bind, cfg.host)
    if cfg.api_key is None:
        changes["api_key"] = settings.api_key
    cfg = dataclasses.replace(cfg, **changes)
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


def load_agent(cfg: ServeConfig, device, settings: Settings):
    from textjepa.agent import Agent
    from textjepa.runtime import choose_precision

    return Agent.load(
        cfg.model,
        decoder=cfg.decoder,
        device=device,
        precision=choose_precision(cfg.precision, device, work="serving").precision,
        vocab=cfg.vocab,
        shape_overrides=cfg.shape_overrides,
        bridge=cfg.bridge,
        decoder_model=cfg.decoder_model,
        settings=settings,
    )


def run(cfg: ServeConfig, args: argparse.Namespace, settings: Settings) -> int:
    return serve(serve_config(cfg, args, settings), settings)


def serve(cfg: ServeConfig, settings: Settings, load: AgentLoader = load_agent) -> int:
    """Serve until stopped. `load` makes the agent (in the background, once the socket is open)."""
    if Path(cfg.model).is_dir():
        raise TextJepaError(folder_given_as_file(Path(cfg.model), "a checkpoint"))
    if not Path(cfg.model).is_file():
        raise TextJepaError(f"model {cfg.model} not found")
    # Bind before the heavy imports, so that a taken port is reported at once. Once the HTTP loop runs,
    # /health answers 503 until the model has loaded in the background.
    sock = open_socket(cfg.host, cfg.port)
    try:
        return _serve(cfg, sock, settings, load)
    finally:
        sock.close()


def _serve(cfg: ServeConfig, sock: socket.socket, settings: Settings, load: AgentLoader) -> int:
    import uvicorn

    from textjepa.runtime import choose_precision, configure_threads, resolve_device
    from textjepa.serve.app import create_app

    configure_threads(settings)
    device = resolve_device(cfg.device)
    precision = choose_precision(cfg.precision, device, work="serving")
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    _configure_logging(cfg.debug)

    failures: list[BaseException] = []

    def on_load_error(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True  # nothing to serve: stop, and report the reason below

    app = create_app(partial(load, cfg, device, settings), cfg, on_load_error=on_load_error)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="debug" if cfg.debug else "info",
            access_log=cfg.debug,  # off by default: one log line per request costs more than a retrieval reply
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    # One first line (clients and tests read the address from it), which also states the precision.
    print(f"textjepa serve: listening on {url}/v1 (model {cfg.model}, loading; {precision.describe()})", flush=True)
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
