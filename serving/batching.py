"""Dynamic batching with a bounded queue and deadlines (asyncio + numpy; no grpc, no prometheus).

Requests (one or more images each) wait in a queue; a batch is formed when a model instance is
free, from every waiting request up to `max_batch_size` images, after waiting at most
`max_queue_delay_us` for the batch to fill. While the instances are busy the queue fills by
itself, so batches grow with load and latency stays flat. A request is never split: one larger
than `max_batch_size` runs as a batch of its own. When `max_queue_size` images already wait, a
new request fails at once with `QueueFullError` instead of waiting without bound. A request
whose deadline has passed by the time its batch forms is dropped with `DeadlineExceededError`.

Example:
    batcher = DynamicBatcher(pipeline.run, BatchingOptions(max_batch_size=64), executor)
    result = await batcher.submit(x, guard=True)   # a PipelineResult for x's images
"""
from __future__ import annotations

import asyncio
import collections
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The queue holds max_queue_size images already."""


class RequestTooLargeError(ValueError):
    """One request holds more images than the queue can ever take."""


class DeadlineExceededError(TimeoutError):
    """The request's deadline passed while it waited for a batch."""


class BatcherClosedError(RuntimeError):
    """The batcher was closed (its model unloaded or the server stopping)."""


@dataclass(frozen=True)
class BatchingOptions:
    """max_batch_size: images gathered into one model run; max_queue_delay_us: how long a free
    instance waits for a batch to fill (0: run at once); max_queue_size: images allowed to wait;
    instances: batches of one model run at the same time."""

    max_batch_size: int = 64
    max_queue_delay_us: int = 0
    max_queue_size: int = 4096
    instances: int = 1

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue_size", "instances"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")


class _Request:
    __slots__ = ("x", "guard", "future", "deadline")

    def __init__(self, x: np.ndarray, guard: bool, future: asyncio.Future, deadline: float | None) -> None:
        self.x, self.guard, self.future, self.deadline = x, guard, future, deadline


class DynamicBatcher:
    """Batches `run(x, guard_mask) -> result` calls; `result.take(slice)` splits a result."""

    def __init__(self, run: Callable, options: BatchingOptions, executor: Executor,
                 on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.run = run
        self.options = options
        self.executor = executor
        self.on_batch = on_batch or (lambda size: None)
        self.on_depth = on_depth or (lambda depth: None)
        self._pending: collections.deque[_Request] = collections.deque()
        self._queued = 0
        self._running = 0
        self._closed = False
        self._slots = asyncio.Semaphore(options.instances)
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker = asyncio.get_running_loop().create_task(self._work())

    @property
    def queued(self) -> int:
        """Images waiting for a batch."""
        return self._queued

    def submit_nowait(self, x: np.ndarray, guard: bool = True, deadline: float | None = None) -> asyncio.Future:
        """Queue `x` (N x C x H x W) and return a future for its result; raises at once when the
        queue is full. `deadline` is in the event loop's clock (`loop.time()`)."""
        if self._closed:
            raise BatcherClosedError("this model is no longer being served")
        n = len(x)
        limit = self.options.max_queue_size
        if n > limit:
            raise RequestTooLargeError(f"request holds {n} images; the server queues at most {limit}: split it")
        if self._queued + n > limit:
            raise QueueFullError(f"queue full: {self._queued} images waiting (limit {limit}); retry with backoff")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(x, guard, future, deadline))
        self._queued += n
        self._idle.clear()
        self._wakeup.set()
        if self._queued >= self.options.max_batch_size:
            self._full.set()
        self.on_depth(self._queued)
        return future

    async def submit(self, x: np.ndarray, guard: bool = True, deadline: float | None = None):
        return await self.submit_nowait(x, guard, deadline)

    async def close(self) -> None:
        """Refuse new requests, finish every queued and running one, stop the worker."""
        self._closed = True
        self._wakeup.set()
        await self._idle.wait()
        self._worker.cancel()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self.options.max_queue_delay_us / 1e6
        while True:
            await self._slots.acquire()
            try:
                while not self._pending:
                    if self._closed and self._running == 0:
                        self._idle.set()
                    self._wakeup.clear()
                    await self._wakeup.wait()
                if delay and self._queued < self.options.max_batch_size:
                    self._full.clear()
                    timer = loop.call_later(delay, self._full.set)
                    await self._full.wait()
                    timer.cancel()
                batch = self._take(loop.time())
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                self._wakeup.set()  # re-check idleness
                continue
            self._running += 1
            loop.create_task(self._run(batch))

    def _take(self, now: float) -> list[_Request]:
        batch: list[_Request] = []
        size = 0
        while self._pending:
            request = self._pending[0]
            n = len(request.x)
            if batch and size + n > self.options.max_batch_size:
                break
            self._pending.popleft()
            self._queued -= n
            if request.future.done():  # cancelled by its caller
                continue
            if request.deadline is not None and now >= request.deadline:
                request.future.set_exception(DeadlineExceededError("deadline passed while queued"))
                continue
            batch.append(request)
            size += n
        self.on_depth(self._queued)
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        try:
            if len(batch) == 1:
                x, guard = batch[0].x, batch[0].guard
            else:
                x = np.concatenate([r.x for r in batch])
                flags = {r.guard for r in batch}
                guard = flags.pop() if len(flags) == 1 else np.concatenate(
                    [np.full(len(r.x), r.guard) for r in batch])
            self.on_batch(len(x))
            result = await loop.run_in_executor(self.executor, self.run, x, guard)
        except Exception as err:  # the model failed: every request in the batch gets the error
            log.exception("batch of %d requests failed", len(batch))
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(err)
        else:
            start = 0
            for request in batch:
                n = len(request.x)
                if not request.future.done():
                    request.future.set_result(result if len(batch) == 1 else result.take(slice(start, start + n)))
                start += n
        finally:
            self._running -= 1
            self._slots.release()
            if self._closed and self._running == 0 and not self._pending:
                self._idle.set()
