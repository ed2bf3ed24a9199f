"""Issue 24 S1, S2: a server a web page cannot turn the user's browser against, through a real `textjepa serve`
on 127.0.0.1 and real clients (httpx sets the headers a browser would: Host, Origin, Content-Type).

The chat page (same origin, tests/test_chat_page.py in Chromium) and the official openai client (tests/test_serve.py)
keep working; here, what a foreign page would send is refused, and what --allowed-host / --cors-origin allow is
answered.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import SERVER_API_KEY as API_KEY
from conftest import ServerProcess, assert_openai_error, assert_user_error, cli_env, run_cli

AUTH = {"Authorization": f"Bearer {API_KEY}"}
USER = [{"role": "user", "content": "tell me about cooking please"}]
CHAT = {"messages": USER}
POSTS = [
    ("/v1/chat/completions", CHAT),
    ("/v1/embeddings", {"input": "tell me about cooking"}),
    ("/v1/textjepa/inspect", CHAT),
]
APP = "https://app.example"


@pytest.fixture(scope="module")
def server(shared_server) -> ServerProcess:
    return shared_server


def port_of(server: ServerProcess) -> int:
    return int(server.base.rsplit(":", 1)[1])


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_api_key_from_the_environment_is_refused(tiny_world, value):
    # S1: as --api-key "" is (it used to start with no key and no warning).
    result = run_cli("serve", tiny_world["world"], "--port", "0", env=cli_env(TEXTJEPA_API_KEY=value), timeout=120)
    assert_user_error(result, "TEXTJEPA_API_KEY", "empty")
    assert_user_error(run_cli("serve", tiny_world["world"], "--port", "0", "--api-key", ""), "api-key")


def test_a_foreign_host_is_misdirected(server):
    port = port_of(server)
    # DNS rebinding: the page's own name now points at 127.0.0.1, and the browser sends that name as Host.
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.evil.example"):
        for method, path in (("GET", "/v1/models"), ("GET", "/health"), ("GET", "/"), ("POST", "/v1/chat/completions")):
            response = httpx.request(
                method, f"{server.base}{path}", headers={**AUTH, "Host": host}, json=CHAT if method == "POST" else None
            )
            assert_openai_error(response, 421, "misdirected_request")
            assert "--allowed-host" in response.json()["error"]["message"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}", f"chat.localhost:{port}"):
        response = httpx.get(f"{server.base}/v1/models", headers={**AUTH, "Host": host})
        assert response.status_code == 200, (host, response.text)


def test_a_foreign_origin_is_forbidden(server):
    port = port_of(server)
    for origin in ("https://evil.example", f"http://localhost:{port + 1}", "null", f"https://127.0.0.1:{port}x"):
        for path, body in POSTS:
            response = httpx.post(f"{server.base}{path}", json=body, headers={**AUTH, "Origin": origin})
            assert_openai_error(response, 403, "origin_not_allowed")
            assert "--cors-origin" in response.json()["error"]["message"]
            assert "access-control-allow-origin" not in response.headers
        assert_openai_error(httpx.get(f"{server.base}/v1/models", headers={**AUTH, "Origin": origin}), 403)
    # The server's own origin (the chat page): as the page's address was typed.
    for own in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        host = own.removeprefix("http://")
        response = httpx.post(
            f"{server.base}/v1/chat/completions", json=CHAT, headers={**AUTH, "Origin": own, "Host": host}
        )
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",  # a "simple" request: a page sends it without a CORS preflight
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=utf-16",
        "application/jsonx",
    ],
)
def test_post_bodies_that_are_not_json_get_415(server, content_type):
    import json

    headers = {**AUTH} if content_type is None else {**AUTH, "Content-Type": content_type}
    for path, body in POSTS:
        response = httpx.post(f"{server.base}{path}", content=json.dumps(body).encode(), headers=headers)
        assert_openai_error(response, 415, "unsupported_media_type")
    ok = httpx.post(
        f"{server.base}/v1/chat/completions",
        content=json.dumps(CHAT).encode(),
        headers={**AUTH, "Content-Type": "Application/JSON; charset=UTF-8"},
    )
    assert ok.status_code == 200, ok.text


@pytest.fixture(scope="module")
def open_server(tiny_world, tmp_path_factory) -> Iterator[ServerProcess]:
    """A server that lets the pages of APP call it (CORS) and answers to the name api.test too."""
    log = tmp_path_factory.mktemp("serve-guard") / "server.log"
    srv = ServerProcess(
        [tiny_world["world"], "--api-key", API_KEY, "--cors-origin", APP, "--allowed-host", "api.test"], log
    )
    srv.wait_ready()
    yield srv
    srv.stop()


def test_a_listed_origin_gets_cors_answers_and_preflights(open_server):
    base = open_server.base
    preflight = httpx.options(
        f"{base}/v1/chat/completions",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200, preflight.text  # a preflight carries no key
    assert preflight.headers["access-control-allow-origin"] == APP
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert {"authorization", "content-type"} <= set(
        preflight.headers["access-control-allow-headers"].lower().split(", ")
    )
    answered = httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers={**AUTH, "Origin": APP})
    assert answered.status_code == 200 and answered.headers["access-control-allow-origin"] == APP
    # The key is still required, and the refusal is readable by the listed page.
    refused = httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers={"Origin": APP})
    assert_openai_error(refused, 401, "invalid_api_key")
    assert refused.headers["access-control-allow-origin"] == APP
    # Any other origin: neither its preflight nor its request.
    other = httpx.options(
        f"{base}/v1/chat/completions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert_openai_error(other, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in other.headers
    port = port_of(open_server)
    assert httpx.get(f"{base}/v1/models", headers={**AUTH, "Host": f"api.test:{port}"}).status_code == 200
    assert_openai_error(httpx.get(f"{base}/v1/models", headers={**AUTH, "Host": f"evil.test:{port}"}), 421)


def test_the_openai_client_is_answered_under_every_guard(open_server):
    client = openai.OpenAI(base_url=f"{open_server.base}/v1", api_key=API_KEY, max_retries=0, timeout=30)
    assert client.chat.completions.create(model="textjepa", messages=USER).choices[0].message.content
    assert len(client.embeddings.create(model="textjepa", input=["a", "b"]).data) == 2


def test_listening_on_every_address_accepts_ip_hosts_but_not_names():
    """The one rule a test on 127.0.0.1 cannot reach: bound to 0.0.0.0, a request may address the machine by any
    of its IP addresses (rebinding works through names only), but a name must still be allowed."""
    from textjepa.serve.guard import BrowserGuard

    everywhere = BrowserGuard(None, "0.0.0.0")
    assert everywhere.host_allowed("192.168.1.20") and everywhere.host_allowed("fe80::1")
    assert not everywhere.host_allowed("evil.example")
    loopback = BrowserGuard(None, "127.0.0.1")
    assert not loopback.host_allowed("192.168.1.20")


def test_a_client_that_leaves_mid_body_is_one_log_line(server):
    import socket
    import time

    host, port = "127.0.0.1", port_of(server)
    before = server.logs()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    )
    clients = 20
    for _ in range(clients):
        with socket.create_connection((host, port), timeout=10) as raw:
            raw.sendall(head.encode() + b'{"messages": [{"role": "user", "content": "')
    deadline = time.monotonic() + 30
    while server.logs().count("disconnected", len(before)) < clients and time.monotonic() < deadline:
        time.sleep(0.1)
    new = server.logs()[len(before) :]
    assert new.count("a client disconnected") == clients, new
    assert "Traceback" not in new and "ERROR" not in new, new
    health = httpx.get(f"{server.base}/health").json()
    assert health["status"] == "ok" and health["in_flight"] == 0
