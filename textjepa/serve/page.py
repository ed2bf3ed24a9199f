"""The chat page served at `/`: one static HTML file with its script inline, shipped as package data.

Everything the page needs is in that file, so it works offline and behind any proxy. Its Content-Security-
Policy allows exactly that file's script (by hash), its inline styles and requests to this server, so a
stray external load (a CDN font, a tracker) is blocked by the browser instead of silently working online.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from starlette.responses import Response

PAGE_FILE = "static/chat.html"
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@dataclass(frozen=True)
class ChatPage:
    html: bytes
    content_security_policy: str

    @classmethod
    def load(cls) -> ChatPage:
        html = resources.files("textjepa.serve").joinpath(PAGE_FILE).read_text(encoding="utf-8")
        scripts = _SCRIPT.findall(html)
        if len(scripts) != 1:
            raise RuntimeError(f"{PAGE_FILE} must hold exactly one inline <script>, found {len(scripts)}")
        digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
        policy = "; ".join(
            [
                "default-src 'none'",
                f"script-src 'sha256-{digest}'",
                "style-src 'unsafe-inline'",
                "connect-src 'self'",
                "img-src data:",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
            ]
        )
        return cls(html.encode(), policy)

    def response(self) -> Response:
        return Response(
            self.html,
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": self.content_security_policy,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache",
            },
        )
