"""What keeps a web page the user visits from turning the browser against the server.

A page on any site can make the browser send requests to 127.0.0.1: without a CORS preflight when the request
is "simple" (a text/plain POST), and with DNS rebinding (the page's own name re-pointed at 127.0.0.1) it can
also read the answers. So, before anything else runs (ASGI middleware, outermost):

- the Host a request addresses must be this server's: the address it listens on, localhost (also
  `*.localhost`, which resolves to loopback by definition), any IP address when it listens on all of them
  (rebinding works through names only), or a name given with --allowed-host; otherwise 421;
- a request from a web page (it carries Origin) must come from the server's own origin (the chat page) or one
  listed with --cors-origin (which then also gets CORS answers, preflights included); otherwise 403;
- a POST body must be JSON (`application/json`, UTF-8); otherwise 415.

Ollama's DNS-rebinding advisory (CVE-2024-28224) was this class of problem; it checks Host and Origin too.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from textjepa.serve.errors import ApiError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
DEFAULT_PORTS = {"http": 80, "https": 443}
ANY = "*"


def host_name(host: str) -> str:
    """The name part of a Host header, lowercased, without its port, brackets or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def split_origin(origin: str) -> tuple[str, str, int | None] | None:
    """(scheme, host name, port) of an Origin header; None for one that is no URL origin ("null")."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.rstrip("."), port or DEFAULT_PORTS[parts.scheme]


class BrowserGuard:
    """The Host, Origin and Content-Type checks above, in front of the app (and of its CORS answers)."""

    def __init__(
        self,
        app: ASGIApp,
        bound_host: str,
        allowed_hosts: tuple[str, ...] = (),
        cors_origins: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.bound_host = host_name(bound_host)
        self.allowed_hosts = {host_name(host) for host in allowed_hosts}
        self.cors_origins = {origin.strip().lower().rstrip("/") for origin in cors_origins}

    def host_allowed(self, name: str) -> bool:
        if ANY in self.allowed_hosts or name in self.allowed_hosts or name == self.bound_host:
            return True
        if name in LOOPBACK_NAMES or name.endswith(".localhost"):
            return True
        return self.bound_host in WILDCARD_ADDRESSES and is_ip_address(name)

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        if ANY in self.cors_origins or origin.strip().lower().rstrip("/") in self.cors_origins:
            return True
        own = split_origin(origin)
        if own is None or host is None:
            return False
        scheme, name, port = own
        # The server's own origin: the page was loaded from the Host this request addresses (the chat page).
        served = split_origin(f"{scheme}://{host}")
        return served is not None and (name, port) == served[1:]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> ApiError | None:
        headers = Headers(scope=scope)
        host = headers.get("host")
        if host is not None and not self.host_allowed(host_name(host)):
            return ApiError(
                421,
                f"this server does not answer to the host {host!r}; start it with --allowed-host "
                f"{host_name(host) or 'NAME'} to allow it",
                "misdirected_request",
            )
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, host):
            return ApiError(
                403,
                f"requests from the web origin {origin!r} are not allowed; start the server with --cors-origin "
                f"{origin} to allow them",
                "origin_not_allowed",
            )
        if scope["method"] == "POST" and not is_json(headers.get("content-type", "")):
            return ApiError(
                415,
                "the request body must be JSON, sent with Content-Type: application/json (UTF-8)",
                "unsupported_media_type",
            )
        return None


def is_json(content_type: str) -> bool:
    """application/json, with no charset or UTF-8 (JSON between systems is UTF-8: RFC 8259)."""
    media, *parameters = (part.strip().lower() for part in content_type.split(";"))
    if media != "application/json":
        return False
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8"):
            return False
    return True
