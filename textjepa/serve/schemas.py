"""Request bodies of the OpenAI API, as pydantic models, and their validation as 400 errors.

Types are strict (a string is not a number, 1 is not true) so that a client's mistake is reported instead of
guessed at; unknown fields are accepted and ignored, since OpenAI clients send many we have no use for.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from textjepa.data.text import NotText, checked_text
from textjepa.serve.errors import ApiError, bad_request

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(_Open):
    role: Literal[ROLES]  # type: ignore[valid-type]
    content: StrictStr | list[ContentPart] | None = None


class StreamOptions(_Open):
    include_usage: StrictBool = False


class ChatRequest(_Open):
    model: StrictStr | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: StrictFloat | StrictInt | None = None
    top_p: StrictFloat | StrictInt | None = None
    n: StrictInt | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    # textjepa's extension (OpenAI clients send it through extra_body): answer with the conditioning vector zeroed.
    ablate_conditioning: StrictBool = False


class InspectRequest(_Open):
    """POST /v1/textjepa/inspect: what the world model predicts for a conversation, without decoding."""

    model: StrictStr | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    top_k: StrictInt = 5


class EmbeddingRequest(_Open):
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None


def parse_json(body: bytes) -> dict:
    """The body as a JSON object whose every string is text (data/text.py: the one rule for text from outside).

    Decoded here as strict UTF-8 (JSON between systems is UTF-8), not by json.loads(bytes), which would guess
    UTF-16 and let UTF-8-encoded surrogates through."""
    try:
        text = checked_text(body, "the request body")
        payload = json.loads(text)
        if _LONE_SURROGATE_HINT.search(text):
            # JSON may spell a lone UTF-16 surrogate (\ud800), which is no character: every later encode would fail.
            checked_text(json.dumps(payload, ensure_ascii=False), "a string of the request body")
    except NotText as exc:
        raise bad_request(str(exc), code="invalid_text") from None
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError:
        raise bad_request("the request body is nested too deeply", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    return payload


# In a strictly decoded body a surrogate can only come in as a \uD800-\uDFFF escape: bodies without one skip the
# check.
_LONE_SURROGATE_HINT = re.compile(r"\\u[dD][89a-fA-F]")


def validate(model: type[_Open], payload: dict) -> _Open:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc) from exc
    except RecursionError:
        raise bad_request("the request body is nested too deeply", code="invalid_value") from None


def validation_error(exc: ValidationError) -> ApiError:
    """The first problem, named by its parameter path (`messages[0].role`), as OpenAI reports it."""
    first = exc.errors(include_url=False)[0]
    param = _param_path(first["loc"])
    if first["type"] == "missing":
        return bad_request(f"missing required parameter: {param!r}", code="missing_required_parameter", param=param)
    if first["type"] in ("literal_error", "too_short", "too_long"):
        return bad_request(f"invalid value for {param!r}: {first['msg']}", code="invalid_value", param=param)
    return bad_request(f"invalid type for {param!r}: {first['msg']}", code="invalid_type", param=param)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param_path(loc: tuple) -> str:
    # pydantic adds the tried union member ("str", "list[ContentPart]", "function-after[...]") to the location;
    # only field names and list indices belong to the parameter path.
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_TAGS:
            path += f".{part}" if path else part
    return path or "body"
