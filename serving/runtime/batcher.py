"""Dynamic batching with a bounded queue and deadlines (asyncio + numpy; no grpc, no prometheus).

Requests (one or more images each) wait in a queue; a batch is formed when a model instance is
free, from every waiting request up to `max_batch_size` images, once the instance has waited
for a fuller batch as `serving.runtime.batch_wait` decides (never for calls made one at a time). A
request is never split: one larger than `max_batch_size` runs as a batch of its own. When
`max_queue_size` images already wait, a new request fails at once with `QueueFullError`
instead of waiting without bound. A request whose deadline has passed by the time its batch
forms is dropped with `DeadlineExceededError`.

`run` is either a blocking function `run(x, guard) -> result`, run in the executor, or a
generator function (`Pipeline.steps`) whose Python runs on the event loop and which yields
only its blocking calls (model runs, which release the GIL) for the executor: the model thread
then never competes with the event loop for the GIL (see serving.runtime.offload). A lone request (a
batch of one, nothing else waiting) runs its steps whole in the executor instead: that is
faster for calls made one at a time, the split run under load (docs/RESULTS.md).

Example:
    batcher = DynamicBatcher(pipeline.steps, BatchingOptions(max_batch_size=64), executor)
    result = await batcher.submit(x, guard=True)   # a PipelineResult for x's images
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import logging
from collections.abc import Callable, Generator
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from serving.errors import BatcherClosedError, DeadlineExceededError, QueueFullError, RequestTooLargeError
from serving.runtime.batch_wait import BatchWait
from serving.runtime.offload import one_step, whole

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingOptions:
    """max_batch_size: images gathered into one model run; max_queue_delay_us: the longest a
    free instance waits for a fuller batch (0: never; see serving.runtime.batch_wait);
    delay_lone_requests: wait for max_batch_size images, lone requests too; max_queue_size:
    images allowed to wait; instances: batches of one model run at the same time."""

    max_batch_size: int = 64
    max_queue_delay_us: int = 2000
    max_queue_size: int = 4096
    instances: int = 1
    delay_lone_requests: bool = False

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
    """Batches `run(x, guard_mask) -> result` calls; `result.take(slice)` splits a result.

    Callbacks on the event loop, no task of its own: a submit schedules one dispatch (for the
    loop's next turn, so every request that arrives in this turn joins the batch, or when the
    wait for a fuller batch ends), each blocking call of the batch's run goes to the executor
    and comes back as one callback, and the last one answers the batch and schedules the next.
    Per request: one future."""

    def __init__(self, run: Callable, options: BatchingOptions, executor: Executor,
                 on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None,
                 on_result: Callable[[object], None] | None = None) -> None:
        self.options = options
        self.executor = executor
        self.on_batch = on_batch or (lambda size: None)
        self.on_depth = on_depth or (lambda depth: None)
        self.on_result = on_result or (lambda result: None)  # once per batch, before it is split
        self._loop = asyncio.get_running_loop()
        self._steps = run if inspect.isgeneratorfunction(run) else one_step(run)
        self._pending: collections.deque[_Request] = collections.deque()
        self._queued = 0
        self._running = 0          # batches handed to the executor and not yet answered
        self._wait = BatchWait(options.max_batch_size, options.max_queue_delay_us, options.delay_lone_requests)
        self._scheduled = False    # a dispatch is due (next loop turn, or when the delay ends)
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

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
        future = self._loop.create_future()
        self._wait.arrived(self._loop.time())
        self._pending.append(_Request(x, guard, future, deadline))
        self._queued += n
        self._idle.clear()
        if self._timer is not None and self._queued >= self._wait.target():
            self._timer.cancel()  # the batch is as large as it is waiting to be
            self._timer = None
            self._loop.call_soon(self._dispatch)
        self._schedule()
        self.on_depth(self._queued)
        return future

    async def submit(self, x: np.ndarray, guard: bool = True, deadline: float | None = None):
        return await self.submit_nowait(x, guard, deadline)

    async def close(self) -> None:
        """Refuse new requests, finish every queued and running one."""
        self._closed = True
        await self._idle.wait()

    def _schedule(self) -> None:
        """Dispatch on the loop's next turn (or once the queue delay ends) if an instance is free."""
        if self._scheduled or not self._pending or self._running >= self.options.instances:
            return
        self._scheduled = True
        if self._wait.needed(self._queued):
            self._timer = self._loop.call_at(self._wait.begin(self._loop.time()), self._waited)
        else:
            self._loop.call_soon(self._dispatch)

    def _waited(self) -> None:
        check = self._wait.next_check(self._loop.time())
        if check is None:
            self._dispatch()
        else:
            self._timer = self._loop.call_at(check, self._waited)

    def _dispatch(self) -> None:
        self._scheduled, self._timer = False, None
        while self._pending and self._running < self.options.instances:
            batch = self._take(self._loop.time())
            if batch:
                self._start(batch)
        self._check_idle()

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

    def _start(self, batch: list[_Request]) -> None:
        if len(batch) == 1:
            x, guard = batch[0].x, batch[0].guard
        else:
            x = np.concatenate([r.x for r in batch])
            flags = {r.guard for r in batch}
            guard = flags.pop() if len(flags) == 1 else np.concatenate(
                [np.full(len(r.x), r.guard) for r in batch])
        self.on_batch(len(x))
        self._wait.ran(len(x))
        self._running += 1
        steps = self._steps(x, guard)
        if len(batch) == 1 and not self._pending:  # a lone call: the whole run in the executor
            steps = whole(steps)
        self._advance(batch, steps, None)

    def _advance(self, batch: list[_Request], steps: Generator, done: concurrent.futures.Future | None) -> None:
        """Drive a run: its Python runs here on the loop, each blocking call it yields in the
        executor, and the call's outcome comes back here (one `call_soon_threadsafe`)."""
        try:
            if done is None:
                call = next(steps)
            elif done.exception() is not None:
                call = steps.throw(done.exception())
            else:
                call = steps.send(done.result())
        except StopIteration as stop:
            self._answer(batch, stop.value, None)
        except Exception as err:  # noqa: BLE001 - the run failed: its requests get the error
            self._answer(batch, None, err)
        else:
            loop = self._loop
            try:
                future = self.executor.submit(call)
            except RuntimeError as err:  # the executor is shut down
                steps.close()
                self._answer(batch, None, err)
                return
            future.add_done_callback(lambda f: loop.call_soon_threadsafe(self._advance, batch, steps, f))

    def _answer(self, batch: list[_Request], result, err: BaseException | None) -> None:
        self._running -= 1
        if err is not None:  # the model failed: every request in the batch gets the error
            log.error("batch of %d requests failed", len(batch), exc_info=err)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(err)
        else:
            try:
                self.on_result(result)
            except Exception:  # noqa: BLE001 - counting must never keep a batch from its answers
                log.exception("on_result failed for a batch of %d requests", len(batch))
            start = 0
            for request in batch:
                n = len(request.x)
                if not request.future.done():
                    request.future.set_result(result if len(batch) == 1 else result.take(slice(start, start + n)))
                start += n
        self._schedule()
        self._check_idle()

    def _check_idle(self) -> None:
        if self._running == 0 and not self._pending:
            self._idle.set()
