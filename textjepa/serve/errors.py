"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}`, so clients show the message."""

from __future__ import annotations

import json

from starlette.responses import Response


class ApiError(Exception):
    """A request the server refuses, with the HTTP status and the OpenAI error fields to send back."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.error_type, self.param = status, message, code, error_type, param
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.error_type, self.code, self.param)

    def response(self) -> Response:
        return json_response(self.body(), self.status, self.headers)


def error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def dumps(data: dict) -> str:
    # Compact separators: these bodies are small and frequent, and every byte is serialised on the event loop.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def json_response(data: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status_code=status, headers=headers, media_type="application/json")


def bad_request(message: str, code: str = "invalid_value", param: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def busy(message: str, retry_after: int = 1) -> ApiError:
    return ApiError(
        429, message, code="server_busy", error_type="rate_limit_error", headers={"Retry-After": str(retry_after)}
    )
