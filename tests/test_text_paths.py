"""Issue 24 T1-T4: every path that takes text in takes any bytes, by one rule (textjepa/data/text.py): what is not
text (invalid UTF-8, a lone UTF-16 surrogate, raw or escaped) is refused with a 400 / an `error:` line / a
TextJepaError naming it, or, in a file of many lines, skipped and counted. Through the real server on 127.0.0.1,
the Python API, the command line's arguments and its input files."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import SERVER_API_KEY as API_KEY
from conftest import assert_openai_error, assert_user_error, run_cli, synthetic_lines

JSON = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def chat_body(content: str, **extra) -> str:
    return json.dumps({"messages": [{"role": "user", "content": content}], **extra})


# (path, body bytes): what a client can send that is not text.
RAW_SURROGATE = b"tell me \xed\xa0\x80 about it"  # U+D800 encoded as UTF-8, which json.loads(bytes) let through
NOT_TEXT_BODIES = [
    ("/v1/chat/completions", chat_body("@").encode().replace(b"@", RAW_SURROGATE)),
    ("/v1/chat/completions", chat_body("@", stream=True).encode().replace(b"@", RAW_SURROGATE)),
    ("/v1/embeddings", json.dumps({"input": ["fine", "@"]}).encode().replace(b"@", RAW_SURROGATE)),
    ("/v1/textjepa/inspect", chat_body("@").encode().replace(b"@", RAW_SURROGATE)),
    ("/v1/chat/completions", chat_body("@").encode().replace(b"@", b"caf\xe9 latin-1")),
    # The escaped surrogate, and the escaped body encoded as UTF-16 (json.loads(bytes) guessed UTF-16).
    ("/v1/chat/completions", chat_body("a\ud800").encode()),
    ("/v1/chat/completions", chat_body("a\ud800").encode("utf-16-le")),
    ("/v1/embeddings", json.dumps({"input": "a\ud800"}).encode("utf-16")),
    ("/v1/textjepa/inspect", chat_body("fine").encode("utf-16-be")),
]


def test_the_server_refuses_what_is_not_text_with_a_400(shared_server):
    before = shared_server.logs().count("Traceback")
    with httpx.Client(base_url=shared_server.base, headers=JSON, timeout=30) as client:
        for path, body in NOT_TEXT_BODIES:
            response = client.post(path, content=body)
            error = assert_openai_error(response, 400)
            assert error["code"] in ("invalid_text", "invalid_json"), error
        # Raw and escaped surrogates are named as such.
        said = client.post("/v1/chat/completions", content=NOT_TEXT_BODIES[0][1]).json()["error"]["message"]
        assert "UTF-8" in said and "ed a0 80" in said, said
        said = client.post("/v1/embeddings", content=json.dumps({"input": "a\udfff"})).json()["error"]["message"]
        assert "U+DFFF" in said, said
        assert client.post("/v1/chat/completions", content=chat_body("tell me about cooking")).status_code == 200
    assert shared_server.logs().count("Traceback") == before, shared_server.logs()


@pytest.mark.parametrize("texts", [["a\ud800"], ["fine", "b\udcff"], "lone \udc80 byte"])
def test_the_python_api_refuses_what_is_not_text(tiny_world, texts):
    from textjepa import WorldModel
    from textjepa.errors import TextJepaError

    model = WorldModel.load(tiny_world["world"], precision="fp32")
    for call in (
        lambda: model.encode(texts),
        lambda: model.encode(texts, kind="reply"),
        lambda: model.predict_next(texts),
        lambda: model.reply(texts if isinstance(texts, str) else texts[-1]),
    ):
        with pytest.raises(TextJepaError, match="which is not text"):
            call()
    assert model.encode(["fine", "café ✓"]).shape[0] == 2


def test_an_argument_with_invalid_utf8_is_an_error_line(tiny_world):
    # Python keeps an argument's invalid byte as a lone surrogate (surrogateescape); subprocess sends it back as
    # the raw byte 0xff.
    result = run_cli("infer", tiny_world["world"], "abc\udcff\udcfe")
    assert_user_error(result, "PROMPT", "0xff")


def test_input_files_with_what_is_not_text_are_skipped_and_counted(tiny_world, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    records = [
        {"context": "a\ud800 question", "response": "an answer with enough words here"},
        {"context": "a fine question", "response": "an answer with enough words \udfff"},
        {"context": "a fine question", "response": "an answer with enough words here"},
    ]
    (shards / "part.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "pairs.txt"
    prepared = run_cli("prepare", "jsonl", "--input-dir", shards, "--output", out)
    assert prepared.returncode == 0, prepared.stderr
    assert out.read_text(encoding="utf-8") == "a fine question\tan answer with enough words here\n"
    assert "not text: 2" in prepared.stdout + prepared.stderr

    lines = tmp_path / "lines.txt"
    good = synthetic_lines(5)
    bad = [b"bad \xff byte", b"raw \xed\xa0\x80"]
    lines.write_bytes(b"\n".join([good[0].encode(), *bad, *(g.encode() for g in good[1:])]))
    vectors = tmp_path / "vectors.npy"
    embedded = run_cli("embed", tiny_world["world"], lines, "--out", vectors)
    assert embedded.returncode == 0, embedded.stderr
    assert "embedded 5 lines, skipped 2 (undecodable: 2)" in embedded.stderr
    import numpy as np

    assert np.load(vectors).shape[0] == 5
