"""`textjepa serve` with test hooks: `python tests/serve_hooks.py MODEL [serve options]`.

The real server and the real decoder, started the way `textjepa serve` starts them, except that the agent is
loaded through a hooked loader, so that the server's tests can cause the rare events a healthy model never
produces. The package itself has no hooks; this file is the only place they live.

- TEXTJEPA_TEST_HOOKS=1 wraps the decoder so that directives in the last user message act on it:
  `[[fail]]`: generate raises, and a stream raises after its first two chunks (a decoder failing mid-stream);
  `[[sleep:S]]`: the decoder call first sleeps S seconds on its thread (a slow generation that holds a slot).
  Everything else goes to the real decoder unchanged.
- TEXTJEPA_TEST_LOAD_DELAY=S waits S seconds before loading the model, so "loading" (503) can be observed.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator

from textjepa.cli import build_parser, command_config, run_guarded
from textjepa.cli.serve_cmd import load_agent, serve, serve_config
from textjepa.config import ServeConfig
from textjepa.decoders.base import Conditioning, Decoder, Generation
from textjepa.settings import Settings

HOOKS_ENV = "TEXTJEPA_TEST_HOOKS"
LOAD_DELAY_ENV = "TEXTJEPA_TEST_LOAD_DELAY"
_SLEEP = re.compile(r"\[\[sleep:([0-9.]+)\]\]")


class DecoderFault(RuntimeError):
    """The failure the [[fail]] test hook raises."""


def hooked_load(cfg: ServeConfig, device, settings: Settings):
    """The server's agent loader, with the hooks this process's environment asks for."""
    delay = float(os.environ.get(LOAD_DELAY_ENV) or 0)
    if delay:
        time.sleep(delay)  # runs on the loading thread: the server answers 503 meanwhile
    agent = load_agent(cfg, device, settings)
    if os.environ.get(HOOKS_ENV) == "1":
        agent.decoder = FaultInjectingDecoder(agent.decoder)
    return agent


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


def main(argv: list[str]) -> int:
    def work() -> int:
        args = build_parser().parse_args(["serve", *argv])
        settings = Settings.from_env()
        return serve(serve_config(command_config(args), args, settings), settings, load=hooked_load)

    return run_guarded(work)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
