"""Admission: at most N requests doing model work at once; a bounded, timed queue behind them; 429 beyond."""

from __future__ import annotations

import asyncio
from collections import deque

from textjepa.serve.errors import busy


class Slot:
    """One admitted request. release() is idempotent, so every exit path may call it."""

    def __init__(self, gate: Admission) -> None:
        self._gate: Admission | None = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._hand_over()


class Admission:
    """A FIFO semaphore with a cap on waiters and a wait timeout, both answered with 429 + Retry-After.

    Lives on one event loop and is touched only from it, so plain counters need no lock.
    """

    def __init__(self, limit: int, max_waiting: int, timeout: float) -> None:
        self.limit, self.max_waiting, self.timeout = limit, max_waiting, timeout
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def acquire(self) -> Slot:
        if self.in_flight < self.limit and not self.waiting:
            self.in_flight += 1
            return Slot(self)
        if self.waiting >= self.max_waiting:
            raise busy(f"server busy: {self.in_flight} requests in flight and {self.waiting} waiting; retry shortly")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            # A slot handed over in the same instant as the timeout or a cancellation is passed on, not lost.
            if waiter.done() and not waiter.cancelled():
                self._hand_over()
            waiter.cancel()
            if isinstance(exc, asyncio.TimeoutError):
                raise busy(f"server busy: no free slot within {self.timeout:g} s; retry shortly") from None
            raise
        finally:
            if waiter in self._waiters and waiter.done():
                self._waiters.remove(waiter)
        return Slot(self)

    def _hand_over(self) -> None:
        # The freed slot goes straight to the oldest live waiter (in_flight unchanged), or back to the pool.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1
