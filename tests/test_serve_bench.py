"""bench/serve_load.py's own parts: its HTTP client across a server's idle close, and the auto / fp32 row."""

import asyncio
import sys

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
from serve_load import RawHttp, precision_comparison  # noqa: E402


async def _answer_once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive server that drops the connection once it has answered, as uvicorn does after 5 s idle."""
    await reader.readuntil(b"\r\n\r\n")  # the bench's requests carry a small body: read it by its length
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    writer.close()


def test_the_client_reopens_a_keep_alive_connection_the_server_closed_while_idle():
    async def scenario() -> list:
        server = await asyncio.start_server(_answer_once_then_close, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = RawHttp(f"http://127.0.0.1:{port}", {})
        try:
            answers = [await client.post("/x", b"")]
            await asyncio.sleep(0.2)  # idle: the server's close arrives
            answers.append(await client.post("/x", b""))
        finally:
            client.close()
            server.close()
            await server.wait_closed()
        return answers

    assert asyncio.run(scenario()) == [(200, b"ok"), (200, b"ok")]


def _side(p99: float, resolved: str | None = None) -> dict:
    side = {"non-stream": {"latency_ms": {"p99": p99}}}
    return {**side, "resolved": resolved} if resolved else side


def test_auto_is_measured_as_the_server_of_the_precision_it_resolved_to():
    sides = {"fp32": _side(80.0), "bf16": _side(96.0), "auto": _side(84.0, "fp32")}
    rows = precision_comparison(sides, bf16_native=True)
    assert rows["non-stream"]["ratio"] == 1.2  # bf16 / fp32
    auto = rows["auto non-stream"]
    assert auto["ratio"] == 1.0 and auto["auto_server_ratio"] == 1.05
    assert auto["kind"] == "auto resolved to fp32"

    sides["auto"] = _side(90.0, "bf16")
    auto = precision_comparison(sides, bf16_native=True)["auto non-stream"]
    assert auto["ratio"] == 1.2 and auto["auto_server_ratio"] == 1.125

    # Resolved to a precision not measured in this run: the auto server's own latency is all there is.
    auto = precision_comparison({"fp32": _side(80.0), "auto": _side(84.0, "bf16")}, True)["auto non-stream"]
    assert auto["ratio"] == 1.05 and "auto_server_ratio" not in auto
