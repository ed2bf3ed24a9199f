"""The API key is the server's only access control: on every /v1 route, only the exact key passes.

Near misses of the right key (the key with characters after it, a prefix of it, the key in another case, the key
with whitespace inside or a word after it) each get 401 from a real `textjepa serve` on 127.0.0.1, while the exact
key gets through. Whitespace around the key is not a near miss: HTTP strips it from a header value (RFC 9110's
optional whitespace) and RFC 6750 allows one or more spaces after "Bearer".

Two servers: one whose model is still loading (it starts in a second and is what scripts/mutation_check.py runs;
the exact key then reaches the route, which answers 503 "model_loading"), and the session's shared server with
its tiny world model loaded (the exact key gets 200).
"""

import httpx
import pytest
from conftest import SERVER_API_KEY, ServerProcess, assert_openai_error

KEY = SERVER_API_KEY  # "test-key-123": letters (a case to change), digits and a dash
NEAR_MISSES = {
    "suffix": KEY + "4",
    "long suffix": KEY + KEY,
    "prefix": KEY[:-1],
    "short prefix": KEY[:1],
    "upper case": KEY.upper(),
    "one letter's case": KEY[0].upper() + KEY[1:],
    "space inside": KEY[:4] + " " + KEY[4:],
    "tab inside": KEY[:4] + "\t" + KEY[4:],
    "a word after": KEY + " " + KEY,
}
CHAT = {"model": "textjepa", "messages": [{"role": "user", "content": "tell me about cooking please"}]}
# Every /v1 route (textjepa/serve/app.py ROUTES) and a /v1 path that is no route: the key is checked first.
ROUTES = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/textjepa", None),
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/chat/completions", {**CHAT, "stream": True}),
    ("POST", "/v1/embeddings", {"model": "textjepa", "input": "the rocket leaves orbit"}),
    ("POST", "/v1/textjepa/inspect", {"messages": CHAT["messages"], "top_k": 2}),
    ("GET", "/v1/no-such-route", None),
]


@pytest.fixture(scope="module")
def loading_server(tmp_path_factory):
    """`textjepa serve --api-key` whose model takes an hour to load: the key is all it can judge."""
    root = tmp_path_factory.mktemp("auth-loading")
    model = root / "model_world_tiny.safetensors"
    model.write_bytes(b"never read: the load waits first")
    server = ServerProcess([model, "--api-key", KEY], root / "server.log", TEXTJEPA_TEST_LOAD_DELAY="3600")
    yield server
    server.proc.kill()  # the loading thread sleeps; a graceful stop would wait for it
    server.proc.wait(30)
    server.log.close()


def call(server: ServerProcess, method: str, path: str, body: dict | None, authorization: str | None):
    headers = {} if authorization is None else {"Authorization": authorization}
    return httpx.request(method, server.base + path, json=body, headers=headers, timeout=60)


ROUTE_IDS = [f"{m} {p}" for m, p, _ in ROUTES]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
def test_only_the_exact_key_passes_while_loading(loading_server, method, path, body):
    only_the_exact_key_passes(loading_server, method, path, body, admitted=503)


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
def test_only_the_exact_key_passes_when_loaded(shared_server, method, path, body):
    only_the_exact_key_passes(shared_server, method, path, body, admitted=200)


def only_the_exact_key_passes(server: ServerProcess, method: str, path: str, body: dict | None, admitted: int) -> None:
    """admitted: the status the exact key gets on a route that exists."""
    for name, key in NEAR_MISSES.items():
        response = call(server, method, path, body, f"Bearer {key}")
        assert response.status_code == 401, f"{name} {key!r}: {response.status_code} {response.text[:200]}"
        assert_openai_error(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    for authorization in (None, "Bearer", f"Basic {KEY}", KEY, f"Token {KEY}", f"Bearer{KEY}"):
        assert_openai_error(call(server, method, path, body, authorization), 401, "invalid_api_key")
    # The exact key (also after several spaces, as RFC 6750 allows, and with the scheme in any case) passes.
    expected = 404 if path == "/v1/no-such-route" else admitted
    for authorization in (f"Bearer {KEY}", f"Bearer   {KEY}", f"bearer {KEY}"):
        response = call(server, method, path, body, authorization)
        assert response.status_code == expected, f"{authorization!r}: {response.status_code} {response.text[:200]}"


def test_the_open_routes_stay_open(loading_server):
    assert httpx.get(f"{loading_server.base}/health", timeout=30).status_code == 503  # loading, no key needed
    assert httpx.get(f"{loading_server.base}/", timeout=30).status_code == 200  # the chat page asks for the key
