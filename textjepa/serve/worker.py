"""World-model work (encoder, transition, conditioning head) for all requests, batched on one thread off the event loop.

Requests put their texts on a queue and await a future. One task drains the queue: everything that arrived
while the previous batch ran goes through the encoder together, so concurrent requests share forward passes
and an idle server adds no waiting. torch releases the GIL in its kernels, so the event loop keeps serving
while a batch runs. One thread is enough: a second would only compete with the first for the same cores.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from textjepa.decoders.base import Conditioning
from textjepa.inference.encoding import Embedded
from textjepa.inference.world import WorldInference


@dataclass
class Conditioned:
    conditioning: Conditioning
    prompt_tokens: int  # tokens the world model saw (at most max_seq)


@dataclass
class _Job:
    kind: str  # "condition" or "embed"
    texts: list[str]
    future: asyncio.Future = field(repr=False)


@dataclass
class WorkerStats:
    batches: int = 0
    texts: int = 0
    largest_batch: int = 0


class ModelWorker:
    def __init__(self, world: WorldInference, max_batch: int) -> None:
        self.world, self.max_batch = world, max_batch
        self.stats = WorkerStats()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="textjepa-model")
        self._queue: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="textjepa-model-worker")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def condition(self, context: str) -> Conditioned:
        return await self._submit("condition", [context])

    async def embed(self, texts: list[str]) -> Embedded:
        return await self._submit("embed", texts)

    async def _submit(self, kind: str, texts: list[str]):
        assert self._wakeup is not None, "ModelWorker.start() was not called"
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(kind, texts, future))
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            jobs = self._take_batch()
            try:
                results = await loop.run_in_executor(self._pool, self._compute, jobs)
            except Exception as exc:  # a failed batch fails its requests, never the worker
                results = [exc] * len(jobs)
            for job, result in zip(jobs, results):
                if job.future.done():  # the request went away meanwhile
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _take_batch(self) -> list[_Job]:
        jobs = [self._queue.popleft()]  # always at least one job, however many texts it has
        count = len(jobs[0].texts)
        while self._queue and count + len(self._queue[0].texts) <= self.max_batch:
            job = self._queue.popleft()
            jobs.append(job)
            count += len(job.texts)
        return jobs

    def _compute(self, jobs: list[_Job]) -> list:
        """On the model thread: one forward pass per kind for the whole batch, results split back per job."""
        live = [job for job in jobs if not job.future.cancelled()]
        results: dict[int, object] = {}
        for kind, run in (("condition", self._condition_texts), ("embed", self._embed_texts)):
            group = [job for job in live if job.kind == kind]
            if not group:
                continue
            texts = [text for job in group for text in job.texts]
            try:
                outputs = run(texts)
            except Exception as exc:
                for job in group:
                    results[id(job)] = exc
                continue
            start = 0
            for job in group:
                results[id(job)] = _slice(kind, outputs, start, start + len(job.texts))
                start += len(job.texts)
        self.stats.batches += 1
        self.stats.texts += sum(len(job.texts) for job in live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        return [results.get(id(job)) for job in jobs]

    def _condition_texts(self, texts: list[str]) -> list[Conditioned]:
        conditionings, encoded = self.world.condition(texts)
        return [Conditioned(c, n) for c, n in zip(conditionings, encoded.kept_counts)]

    def _embed_texts(self, texts: list[str]) -> Embedded:
        """The context encoder's latents, as the Python API's `WorldModel.encode` computes them."""
        return self.world.context_encoder.embed_texts(texts, self.max_batch)


def _slice(kind: str, outputs, start: int, end: int):
    if kind == "condition":
        return outputs[start]  # one context per condition job
    return Embedded(outputs.vectors[start:end], outputs.token_counts[start:end])
