"""TEST HOOKS, off unless their environment variables are set. Never set them in production.

They let the server's tests cause the rare events a healthy model never produces, through the real server
and the real decoder:

- TEXTJEPA_TEST_HOOKS=1 wraps the decoder so that directives in the last user message act on it:
  `[[fail]]`: generate raises, and a stream raises after its first two chunks (a decoder failing mid-stream);
  `[[sleep:S]]`: the decoder call first sleeps S seconds on its thread (a slow generation that holds a slot).
  Everything else goes to the real decoder unchanged.
- TEXTJEPA_TEST_LOAD_DELAY=S waits S seconds before loading the model, so "loading" (503) can be observed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

from textjepa.decoders.base import Conditioning, Decoder, Generation

HOOKS_ENV = "TEXTJEPA_TEST_HOOKS"
LOAD_DELAY_ENV = "TEXTJEPA_TEST_LOAD_DELAY"
_SLEEP = re.compile(r"\[\[sleep:([0-9.]+)\]\]")


class DecoderFault(RuntimeError):
    """The failure the [[fail]] test hook raises."""


def load_delay() -> float:
    return float(os.environ.get(LOAD_DELAY_ENV) or 0)


def maybe_wrap(decoder: Decoder) -> Decoder:
    return FaultInjectingDecoder(decoder) if os.environ.get(HOOKS_ENV) == "1" else decoder


class FaultInjectingDecoder:
    def __init__(self, inner: Decoder) -> None:
        self.inner = inner
        self.name = inner.name
        self.thread_safe = getattr(inner, "thread_safe", False)

    def generate(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int = 128, **options
    ) -> Generation:
        fail = self._directives(messages)
        if fail:
            raise DecoderFault("test hook [[fail]]: the decoder failed")
        return self.inner.generate(messages, conditioning, max_new_tokens, **options)

    def stream(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int = 128, **options
    ) -> Iterator[str]:
        fail = self._directives(messages)
        for count, chunk in enumerate(self.inner.stream(messages, conditioning, max_new_tokens, **options)):
            if fail and count == 2:
                raise DecoderFault("test hook [[fail]]: the decoder failed mid-stream")
            yield chunk
        if fail:
            raise DecoderFault("test hook [[fail]]: the decoder failed at the end of the stream")

    @staticmethod
    def _directives(messages: list[dict]) -> bool:
        """Sleeps as asked; returns whether to fail."""
        users = [m for m in messages if m.get("role") == "user"]
        text = str(users[-1].get("content") or "") if users else ""
        sleep = _SLEEP.search(text)
        if sleep:
            time.sleep(float(sleep.group(1)))
        return "[[fail]]" in text
