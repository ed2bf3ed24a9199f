"""The OpenAI-compatible server, through a real `textjepa serve` subprocess on 127.0.0.1.

The session's tiny world model and its shared server (tests/conftest.py); clients are httpx and the official
`openai` package. The server runs through tests/serve_hooks.py (`textjepa serve` with test hooks) so that a slow
or failing decoder and the loading phase can be caused on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from conftest import SERVER_API_KEY as API_KEY
from conftest import SERVER_CONCURRENCY as CONCURRENCY
from conftest import SERVER_MAX_BODY as MAX_BODY
from conftest import SERVER_QUEUE_TIMEOUT as QUEUE_TIMEOUT
from conftest import ServerProcess, assert_openai_error, assert_user_error, run_cli

AUTH = {"Authorization": f"Bearer {API_KEY}"}
USER = [{"role": "user", "content": "tell me about cooking please"}]


@pytest.fixture(scope="module")
def world_model(tiny_world) -> Path:
    return tiny_world["world"]


@pytest.fixture(scope="module")
def server(shared_server) -> ServerProcess:
    return shared_server


def oai(server, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key=key, max_retries=0, timeout=30)


def replies(world_model: Path) -> set[str]:
    return set(world_model.with_name(world_model.name.replace(".safetensors", ".replies.txt")).read_text().splitlines())


def sse_events(response: httpx.Response) -> list:
    """data: payloads of an SSE response, parsed ([DONE] kept as the string)."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", line
    return events


# --- health, models, auth ---------------------------------------------------------------------------------


def test_health_is_503_while_loading_then_ok(server):
    first_status, first_body, retry_after = server.health_history[0]
    assert first_status == 503 and first_body == {"status": "loading"} and retry_after == "1"
    health = httpx.get(f"{server.base}/health")  # open: no key needed
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["model"] == "textjepa"


def test_models(client, server):
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["textjepa"]
    assert client.get("/v1/models/textjepa").json()["id"] == "textjepa"
    assert_openai_error(client.get("/v1/models/gpt-4"), 404, "model_not_found")
    assert [m.id for m in oai(server).models.list()] == ["textjepa"]


def test_api_key_is_required_on_v1_only(server):
    body = {"model": "textjepa", "messages": USER}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}):
        response = httpx.post(f"{server.base}/v1/chat/completions", json=body, headers=headers)
        assert_openai_error(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    assert_openai_error(httpx.get(f"{server.base}/v1/models"), 401, "invalid_api_key")
    assert httpx.post(f"{server.base}/v1/chat/completions", json=body, headers=AUTH).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        oai(server, key="wrong").chat.completions.create(model="textjepa", messages=USER)
    assert httpx.get(f"{server.base}/health").status_code == 200


# --- chat completions --------------------------------------------------------------------------------------


def test_chat_completion_matches_the_agent(client, world_model, agent):
    response = client.post(
        "/v1/chat/completions",
        # Fields the server has no use for are accepted and ignored, as OpenAI clients send many.
        json={"model": "anything", "messages": USER, "stop": ["\n"], "user": "u1", "presence_penalty": 0, "tools": []},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "textjepa"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    expected = agent.respond(USER)
    assert choice["message"]["content"] == expected.generation.text
    assert choice["message"]["content"] in replies(world_model)
    usage = body["usage"]
    assert usage["prompt_tokens"] == expected.prompt_tokens > 0
    assert usage["completion_tokens"] == expected.generation.completion_tokens > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_the_world_model_sees_the_conversation(client, agent):
    """Context = the User:/Assistant: turns (system left out), truncated to the last max_seq tokens."""

    def prompt_tokens(messages: list[dict]) -> int:
        response = client.post("/v1/chat/completions", json={"model": "textjepa", "messages": messages})
        assert response.status_code == 200, response.text
        return response.json()["usage"]["prompt_tokens"]

    def tokens(text: str) -> int:
        return len(agent.world.checkpoint.tokenizer.encode(text, add_special_tokens=False).ids)

    system = {"role": "system", "content": "You are a helpful assistant."}
    assert prompt_tokens([system, *USER]) == prompt_tokens(USER) == tokens("User: tell me about cooking please")
    turns = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": "rain"}, {"type": "text", "text": "falls"}]},
    ]
    assert prompt_tokens(turns) == tokens("User: hi\nAssistant: hello\nUser: rain\nfalls")
    long_talk = [{"role": "user", "content": "cooking " * 300}]
    assert prompt_tokens(long_talk) == agent.world.config.max_seq


def test_max_tokens_caps_the_reply(client):
    response = client.post("/v1/chat/completions", json={"model": "textjepa", "messages": USER, "max_tokens": 2})
    body = response.json()
    assert len(body["choices"][0]["message"]["content"].split()) == 2
    assert body["usage"]["completion_tokens"] == 2 and body["choices"][0]["finish_reason"] == "length"


def test_chat_stream(client):
    plain = client.post("/v1/chat/completions", json={"model": "textjepa", "messages": USER}).json()
    request = {"model": "textjepa", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks, usage_chunk = events[:-2], events[-2]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(contents) > 1 and all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert "".join(contents) == plain["choices"][0]["message"]["content"]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == len(contents)
    assert usage_chunk["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]


def test_openai_client_chat_and_stream(server, agent):
    client = oai(server)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "tell me about music please"}]
    completion = client.chat.completions.create(model="textjepa", messages=messages, max_tokens=64, temperature=0.2)
    text = completion.choices[0].message.content
    assert text == agent.respond(messages).generation.text
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    stream = client.chat.completions.create(model="textjepa", messages=messages, stream=True)
    pieces, finishes = [], []
    for event in stream:
        pieces.append(event.choices[0].delta.content or "")
        finishes.append(event.choices[0].finish_reason)
    assert "".join(pieces) == text and finishes[-1] == "stop"


# --- embeddings --------------------------------------------------------------------------------------------


def test_embeddings_are_the_encoder_latents(client, server, agent):
    texts = ["rain falls from grey clouds", "the guitar plays a slow melody", "rain falls from grey clouds"]
    body = client.post("/v1/embeddings", json={"model": "textjepa", "input": texts}).json()
    assert body["object"] == "list" and body["model"] == "textjepa"
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and all(d["object"] == "embedding" for d in body["data"])
    vectors = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert vectors.shape == (3, agent.world.config.dim)
    np.testing.assert_allclose(vectors, agent.world.context_encoder.embed_texts(texts, 32).vectors.numpy(), atol=1e-5)
    counts = [len(agent.world.checkpoint.tokenizer.encode(t, add_special_tokens=False).ids) for t in texts]
    assert body["usage"] == {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
    single = client.post("/v1/embeddings", json={"input": texts[1]}).json()
    np.testing.assert_allclose(single["data"][0]["embedding"], vectors[1], atol=1e-5)
    packed = client.post("/v1/embeddings", json={"input": texts[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, vectors[0], atol=1e-6)
    # The official client asks for base64 by default and decodes it.
    result = oai(server).embeddings.create(model="textjepa", input=texts[:2])
    np.testing.assert_allclose(np.array([d.embedding for d in result.data]), vectors[:2], atol=1e-5)


# --- bad requests ------------------------------------------------------------------------------------------

MSG = [{"role": "user", "content": "hi"}]
BAD_CHAT = [
    ("{not json", 400, "invalid_json", None),
    ("[1, 2]", 400, "invalid_json", None),
    ({"model": "textjepa"}, 400, "missing_required_parameter", "messages"),
    ({"messages": []}, 400, "invalid_value", "messages"),
    ({"messages": "hi"}, 400, "invalid_type", "messages"),
    ({"messages": [{"role": "system", "content": "only a system turn"}]}, 400, "invalid_value", "messages"),
    ({"messages": [{"role": "user", "content": "   "}]}, 400, "invalid_value", "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_value", "messages[0].role"),
    ({"messages": [{"content": "hi"}]}, 400, "missing_required_parameter", "messages[0].role"),
    ({"messages": [{"role": "user", "content": 42}]}, 400, "invalid_type", "messages[0].content"),
    ({"messages": MSG, "max_tokens": "5"}, 400, "invalid_type", "max_tokens"),
    ({"messages": MSG, "max_tokens": True}, 400, "invalid_type", "max_tokens"),
    ({"messages": MSG, "stream": "yes"}, 400, "invalid_type", "stream"),
    ({"messages": MSG, "temperature": "hot"}, 400, "invalid_type", "temperature"),
    ({"messages": MSG, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ({"messages": MSG, "max_tokens": 513}, 400, "invalid_value", "max_tokens"),
    ({"messages": MSG, "max_completion_tokens": -1}, 400, "invalid_value", "max_completion_tokens"),
    ({"messages": MSG, "temperature": 3}, 400, "invalid_value", "temperature"),
    ({"messages": MSG, "n": 2}, 400, "invalid_value", "n"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "unsupported_content",
        "messages[0].content[0]",
    ),
    ({"messages": [{"role": "user", "content": "x" * (MAX_BODY + 10)}]}, 413, "request_too_large", None),
]
BAD_EMBEDDINGS = [
    ({"model": "textjepa"}, 400, "missing_required_parameter", "input"),
    ({"input": []}, 400, "invalid_value", "input"),
    ({"input": 7}, 400, "invalid_type", "input"),
    ({"input": [1, 2, 3]}, 400, "unsupported_input", "input"),
    ({"input": ["fine", ""]}, 400, "invalid_value", "input[1]"),
    ({"input": "fine", "dimensions": 8}, 400, "invalid_value", "dimensions"),
    ({"input": "fine", "encoding_format": "hex"}, 400, "invalid_value", "encoding_format"),
    ("{", 400, "invalid_json", None),
]


@pytest.mark.parametrize(
    "path,body,status,code,param",
    [("/v1/chat/completions", *case) for case in BAD_CHAT] + [("/v1/embeddings", *case) for case in BAD_EMBEDDINGS],
)
def test_bad_requests_get_openai_errors(client, path, body, status, code, param):
    if isinstance(body, str):
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post(path, json=body)
    error = assert_openai_error(response, status, code, param)
    assert error["type"] == "invalid_request_error"


def test_other_errors_and_the_server_keeps_serving(client, server):
    assert_openai_error(client.get("/v1/nope"), 404, "not_found")
    assert_openai_error(client.get("/v1/chat/completions"), 405, "method_not_allowed")
    # A body larger than the drain window is refused from its declared length alone.
    huge = client.post("/v1/embeddings", content=b"x" * (MAX_BODY * 5), headers={"Content-Type": "application/json"})
    assert_openai_error(huge, 413, "request_too_large")
    with pytest.raises(openai.BadRequestError) as caught:
        oai(server).chat.completions.create(model="textjepa", messages=[{"role": "system", "content": "no user"}])
    assert caught.value.status_code == 400 and "user message" in caught.value.message
    assert client.post("/v1/chat/completions", json={"messages": USER}).status_code == 200
    assert httpx.get(f"{server.base}/health").json()["status"] == "ok"


def test_decoder_failure_mid_stream_ends_with_an_error_event(client, server):
    failing = [{"role": "user", "content": "tell me about cooking please [[fail]]"}]
    with client.stream("POST", "/v1/chat/completions", json={"messages": failing, "stream": True}) as response:
        assert response.status_code == 200
        events = sse_events(response)  # returns: the stream ends, it does not hang
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [e["choices"][0]["delta"]["content"] for e in events[1:3]] and len(events) == 4
    assert events[-1]["error"]["code"] == "decoder_error" and "mid-stream" in events[-1]["error"]["message"]
    assert "[DONE]" not in events
    with pytest.raises(openai.APIError, match="decoder failed"):
        for _ in oai(server).chat.completions.create(model="textjepa", messages=failing, stream=True):
            pass
    assert_openai_error(client.post("/v1/chat/completions", json={"messages": failing}), 500, "decoder_error")
    assert client.post("/v1/chat/completions", json={"messages": USER}).status_code == 200


# --- concurrency -------------------------------------------------------------------------------------------


async def _post_all(base: str, bodies: list[dict]) -> list[tuple[httpx.Response, float]]:
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as c:

        async def one(body: dict) -> tuple[httpx.Response, float]:
            started = time.perf_counter()
            response = await c.post("/v1/chat/completions", json=body)
            return response, time.perf_counter() - started

        return await asyncio.gather(*(one(b) for b in bodies))


def test_generations_run_in_parallel_and_fast_requests_pass_slow_ones(server):
    slow = {"messages": [{"role": "user", "content": "cooking [[sleep:2]]"}]}
    fast = {"messages": USER}
    started = time.perf_counter()
    results = asyncio.run(_post_all(server.base, [slow, slow, fast, fast]))
    elapsed = time.perf_counter() - started
    assert all(r.status_code == 200 for r, _ in results), [r.text for r, _ in results]
    # Two 2 s generations together in well under 4 s: the decoder is not behind one global lock...
    assert elapsed < 3.6, elapsed
    # ...and the fast requests did not wait for the slow ones.
    assert all(seconds < 1.5 for _, seconds in results[2:]), results


def test_many_concurrent_requests_are_batched_and_all_answered(server, agent):
    prompts = [f"tell me about {topic} please number {i}" for i in range(8) for topic in ("music", "garden", "code")]
    bodies = [{"messages": [{"role": "user", "content": p}]} for p in prompts[:32]]
    before = httpx.get(f"{server.base}/health").json()
    results = asyncio.run(_post_all(server.base, bodies))
    assert [r.status_code for r, _ in results] == [200] * len(bodies)
    for (response, _), body in zip(results, bodies):
        assert response.json()["choices"][0]["message"]["content"] == agent.respond(body["messages"]).generation.text
    after = httpx.get(f"{server.base}/health").json()
    # Fewer encoder batches than requests: concurrent requests shared forward passes.
    assert after["encoder_batches"] - before["encoder_batches"] < len(bodies)
    assert after["largest_batch"] > 1 and after["in_flight"] == 0 and after["waiting"] == 0


def test_beyond_max_concurrency_requests_wait_then_get_429(server):
    slow = {"messages": [{"role": "user", "content": "cooking [[sleep:3.5]]"}]}

    async def scenario():
        holders = asyncio.gather(*(_post_all(server.base, [slow]) for _ in range(CONCURRENCY)))
        async with httpx.AsyncClient(base_url=server.base) as probe:
            deadline = time.monotonic() + 3
            while (await probe.get("/health")).json()["in_flight"] < CONCURRENCY and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # until the slow ones hold every slot
        started = time.perf_counter()
        [(refused, _)] = await _post_all(server.base, [{"messages": USER}])
        waited = time.perf_counter() - started
        return await holders, refused, waited

    held, refused, waited = asyncio.run(scenario())
    assert all(r.status_code == 200 for [(r, _)] in held)
    error = assert_openai_error(refused, 429, "server_busy")
    assert error["type"] == "rate_limit_error" and refused.headers["retry-after"] == "1"
    assert QUEUE_TIMEOUT - 0.2 < waited < QUEUE_TIMEOUT + 1.0, waited  # it waited in the queue first
    with httpx.Client(base_url=server.base, headers=AUTH) as c:
        assert c.post("/v1/chat/completions", json={"messages": USER}).status_code == 200


def test_a_client_that_leaves_mid_stream_frees_its_slot(server):
    slow_stream = {"messages": [{"role": "user", "content": "cooking [[sleep:0.5]]"}], "stream": True}
    with httpx.Client(base_url=server.base, headers=AUTH, timeout=30) as c:
        for _ in range(CONCURRENCY + 2):
            with c.stream("POST", "/v1/chat/completions", json=slow_stream) as response:
                next(response.iter_lines())  # the role chunk, then hang up
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.base}/health").json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(f"{server.base}/health").json()["in_flight"] == 0
        assert c.post("/v1/chat/completions", json={"messages": USER}).status_code == 200


# --- in-process parts: the batching worker and the admission gate ------------------------------------------


def test_worker_batches_concurrent_requests_with_the_same_results(agent):
    from textjepa.serve.worker import ModelWorker

    contexts = [f"User: tell me about {t} please" for t in ("music", "garden", "code", "space", "weather")]

    async def run():
        worker = ModelWorker(agent.world, max_batch=64)
        worker.start()
        try:
            conditioned = await asyncio.gather(*(worker.condition(c) for c in contexts))
            embedded = await asyncio.gather(worker.embed(contexts[:2]), worker.embed(contexts[2:]))
            return conditioned, embedded, worker.stats
        finally:
            worker.close()

    conditioned, embedded, stats = asyncio.run(run())
    assert stats.batches == 2 and stats.largest_batch == len(contexts)
    for context, result in zip(contexts, conditioned):
        [alone], encoded = agent.world.condition([context])
        np.testing.assert_allclose(result.conditioning.predicted, alone.predicted, atol=1e-5)
        assert result.prompt_tokens == encoded.token_counts[0]
    vectors = np.concatenate([e.vectors.numpy() for e in embedded])
    np.testing.assert_allclose(
        vectors, agent.world.context_encoder.embed_texts(contexts, 32).vectors.numpy(), atol=1e-5
    )


def test_admission_gate_queue_timeout_and_hand_over():
    from textjepa.serve.errors import ApiError
    from textjepa.serve.limits import Admission

    async def run():
        gate = Admission(limit=1, max_waiting=1, timeout=0.3)
        first = await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0.01)
        with pytest.raises(ApiError) as full:  # one waiting already: refused at once
            await gate.acquire()
        assert full.value.status == 429 and full.value.headers["Retry-After"] == "1"
        first.release()
        first.release()  # idempotent
        second = await waiter  # handed over, FIFO
        assert gate.in_flight == 1
        with pytest.raises(ApiError) as timed_out:
            await gate.acquire()
        assert "within 0.3 s" in timed_out.value.message
        cancelled = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        second.release()
        assert gate.in_flight == 0 and gate.waiting == 0
        third = await gate.acquire()
        assert gate.in_flight == 1
        third.release()

    asyncio.run(run())


def test_create_app_with_an_agent_in_process(agent):
    """The app factory also takes an Agent loaded by the caller (ready at once, no loader thread)."""
    from fastapi.testclient import TestClient

    from textjepa.config import ServeConfig
    from textjepa.serve.app import create_app

    # As a browser on this machine addresses it (TestClient's own default Host, "testserver", is no name of it).
    with TestClient(create_app(agent, ServeConfig(model_id="in-process")), base_url="http://localhost") as local:
        assert local.get("/health").json()["status"] == "ok"
        body = local.post("/v1/chat/completions", json={"messages": USER}).json()
        assert body["model"] == "in-process"
        assert body["choices"][0]["message"]["content"] == agent.respond(USER).generation.text
        assert local.get("/v1/models").json()["data"][0]["id"] == "in-process"  # no key configured: open


# --- the command line --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--bind", "nonsense"], "not host:port"),
        (["--bind", "127.0.0.1:99999"], "not in 0..65535"),
        (["--bind", "a:b:c"], "not host:port"),
        (["--bind", "127.0.0.1:8080", "--port", "9000"], "either --bind"),
        (["--max-concurrency", "0"], "max-concurrency"),
        (["--bind", "192.0.2.1:8080"], "not an address of this machine"),
    ],
)
def test_serve_argument_errors(world_model, args, needle):
    assert_user_error(run_cli("serve", world_model, *args), needle)


def test_serve_startup_errors(world_model, tmp_path):
    assert_user_error(run_cli("serve", tmp_path / "missing.safetensors"), "not found")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_user_error(run_cli("serve", world_model, "--port", port), f"port {port} is already in use")
        # The seed's form: --serve <model> <vocab> [bind] ...
        vocab = world_model.parent / "vocab_world.txt"
        assert_user_error(run_cli("--serve", world_model, vocab, f"127.0.0.1:{port}"), "already in use")
    # Problems found while loading (after the socket is open) stop the server with one clear line.
    assert_user_error(run_cli("--serve", world_model, vocab, "127.0.0.1:0", "64"), "dim=64", "disagrees")


# --- hostile input (issue 14) ------------------------------------------------------------------------------

NESTED = "[" * 1000 + "]" * 1000
HOSTILE = [
    ("/v1/chat/completions", '{"messages": ' + NESTED + "}"),
    ("/v1/embeddings", '{"input": ' + NESTED + "}"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}'),
    ("/v1/embeddings", '{"input": ["fine", "\\udc00"]}'),
]


def test_deep_nesting_and_lone_surrogates_are_client_errors(server):
    before = server.logs().count("Traceback")
    # One keep-alive connection for all: a client error must not reset it.
    with httpx.Client(base_url=server.base, headers=AUTH, timeout=30) as one_connection:
        for path, body in HOSTILE:
            response = one_connection.post(path, content=body, headers={"Content-Type": "application/json"})
            error = assert_openai_error(response, 400)
            assert error["type"] == "invalid_request_error", error
            assert response.headers.get("connection", "keep-alive") != "close"
        assert one_connection.post("/v1/chat/completions", json={"messages": USER}).status_code == 200
    # A lone surrogate spelled as an escape inside a valid pair of text is fine: "\ud83d\ude00" is one emoji.
    emoji = '{"input": "smile \\ud83d\\ude00"}'
    ok = httpx.post(f"{server.base}/v1/embeddings", content=emoji, headers={**AUTH, "Content-Type": "application/json"})
    assert ok.status_code == 200, ok.text
    assert server.logs().count("Traceback") == before, server.logs()


def test_health_after_a_failed_load_names_no_local_path(tmp_path):
    """The real server (uvicorn on 127.0.0.1) whose model fails to load: /health says error, without the path."""
    import uvicorn

    from textjepa.config import ServeConfig
    from textjepa.errors import TextJepaError
    from textjepa.serve.app import create_app

    secret = str(tmp_path / "private" / "model_world_1k.safetensors")

    def failing_loader():
        raise TextJepaError(f"checkpoint not found: {secret}")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(failing_loader, ServeConfig()), "127.0.0.1", port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline, health = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if health.json()["status"] == "error":
                break
            time.sleep(0.05)
        assert health is not None and health.status_code == 503 and health.json()["status"] == "error", health
        assert str(tmp_path) not in health.text and "private" not in health.text
        chat = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": USER}, timeout=5)
        assert chat.status_code == 503 and "private" not in chat.text
    finally:
        server.should_exit = True
        thread.join(10)
