"""Run a decoder's blocking generate/stream on worker threads, as many at once as the decoder allows.

A decoder that declares `thread_safe = True` (the retrieval decoder: read-only tensors) runs up to
`parallel` generations at once; any other decoder (an LLM with one llama.cpp context, say) runs one at a
time, since its state is not safe to share. Either way only that decoder's calls queue, never the whole
server, and the event loop stays free.

A generation's thread cannot be interrupted. If the request goes away mid-call, the call still finishes on
its thread, and only then is the decoder's stream closed and its turn given up, so a non-thread-safe decoder
is never entered twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from textjepa.decoders.base import Conditioning, Decoder, Generation

_END = object()
PULL_BUDGET = 0.005  # seconds a streamed chunk may wait for the ones after it, to share a thread hop and a write
PULL_MAX = 256


class DecoderRunner:
    def __init__(self, decoder: Decoder, parallel: int) -> None:
        self.decoder = decoder
        self.thread_safe = bool(getattr(decoder, "thread_safe", False))
        self.parallel = parallel if self.thread_safe else 1
        self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="textjepa-decoder")
        self._turns = asyncio.Semaphore(self.parallel)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def generate(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int, **options
    ) -> Generation:
        await self._turns.acquire()
        call = partial(self.decoder.generate, messages, conditioning, max_new_tokens=max_new_tokens, **options)
        future = self._run(call)
        future.add_done_callback(lambda _: self._turns.release())
        # shield: a cancelled request must not release the turn while the thread is still in the decoder.
        return await asyncio.shield(future)

    async def stream(
        self, messages: list[dict], conditioning: Conditioning, max_new_tokens: int, **options
    ) -> AsyncIterator[list[str]]:
        """The decoder's chunks, in lists: whatever it produced within PULL_BUDGET of one thread hop."""
        await self._turns.acquire()
        iterator: Iterator[str] | None = None
        pending: asyncio.Future | None = None
        try:
            pending = self._run(
                lambda: iter(self.decoder.stream(messages, conditioning, max_new_tokens=max_new_tokens, **options))
            )
            iterator = await asyncio.shield(pending)
            while True:
                pending = self._run(partial(_pull, iterator))
                chunks, ended, error = await asyncio.shield(pending)
                if chunks:
                    yield chunks
                if error is not None:
                    raise error
                if ended:
                    break
        finally:
            self._finish(iterator, pending)

    def _run(self, call: Callable) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._pool, call)

    def _finish(self, iterator: Iterator[str] | None, pending: asyncio.Future | None) -> None:
        """Close the decoder's stream and give up the turn, after any call still running on its thread."""

        def close(_: object = None) -> None:
            if iterator is None and pending is not None and pending.done() and not pending.cancelled():
                created = pending.exception() is None and pending.result()
                _close_iterator(created)
            else:
                _close_iterator(iterator)
            self._turns.release()

        if pending is not None and not pending.done():
            pending.add_done_callback(close)
        else:
            close()


def _pull(iterator: Iterator[str]) -> tuple[list[str], bool, Exception | None]:
    """Chunks for one thread hop: a fast decoder (retrieval) gives its whole reply at once, instead of paying
    a hop and a socket write per word; a slow one (an LLM, a token per call) still sends each token as soon
    as it exists, since another call is made only while within the budget. A failure is returned beside the
    chunks that came before it, so that those are still sent."""
    chunks: list[str] = []
    deadline = time.perf_counter() + PULL_BUDGET
    while True:
        try:
            chunk = next(iterator, _END)
        except Exception as exc:
            return chunks, True, exc
        if chunk is _END:
            return chunks, True, None
        chunks.append(chunk)
        if time.perf_counter() >= deadline or len(chunks) >= PULL_MAX:
            return chunks, False, None


def _close_iterator(iterator: object) -> None:
    closer = getattr(iterator, "close", None)
    if callable(closer):
        try:
            closer()  # runs the decoder generator's cleanup (its finally blocks)
        except Exception:  # a decoder that fails while closing must not take the turn with it
            pass
