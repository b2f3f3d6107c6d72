"""The dynamic batcher: batches gather waiting requests, the queue is bounded, deadlines and
close() are honoured. The model is held busy with a threading.Event, never with sleeps."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batching import (
    BatcherClosedError, BatchingOptions, DeadlineExceededError, DynamicBatcher, QueueFullError,
    RequestTooLargeError,
)


class Rows:
    """A result that `take`s like a PipelineResult: the batch's first pixel per image."""

    def __init__(self, values):
        self.values = values

    def take(self, index):
        return Rows(self.values[index])


class GatedModel:
    """run() blocks until `gate` is set; records each batch's size."""

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.sizes: list[int] = []

    def run(self, x, guard):
        self.started.set()
        self.gate.wait(30)
        self.sizes.append(len(x))
        return Rows(x[:, 0, 0, 0].copy())


def images(n, value=0.0):
    return np.full((n, 1, 2, 2), value, dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


async def _started(model):
    await asyncio.get_running_loop().run_in_executor(None, model.started.wait, 30)


def test_waiting_requests_form_one_batch_and_results_come_back_split():
    async def main():
        model = GatedModel()
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(model.run, BatchingOptions(max_batch_size=4), pool)
            first = batcher.submit_nowait(images(1, 0.5))
            await _started(model)  # the instance is busy with the first request
            later = [batcher.submit_nowait(images(1, i / 10)) for i in range(6)]
            assert batcher.queued == 6
            model.gate.set()
            results = await asyncio.gather(first, *later)
            await batcher.close()
        assert model.sizes == [1, 4, 2]
        np.testing.assert_allclose(np.concatenate([r.values for r in results[1:]]), np.arange(6) / 10, rtol=1e-6)
    run(main())


def test_full_queue_refuses_at_once_and_recovers():
    async def main():
        model = GatedModel()
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(model.run, BatchingOptions(max_batch_size=8, max_queue_size=8), pool)
            running = batcher.submit_nowait(images(1))
            await _started(model)
            queued = batcher.submit_nowait(images(8))
            with pytest.raises(QueueFullError, match="queue full: 8 images waiting"):
                batcher.submit_nowait(images(1))
            with pytest.raises(RequestTooLargeError, match="holds 9 images"):
                batcher.submit_nowait(images(9))
            model.gate.set()
            await asyncio.gather(running, queued)
            assert len((await batcher.submit(images(2))).values) == 2
            await batcher.close()
    run(main())


def test_expired_deadline_is_dropped_before_it_runs():
    async def main():
        model = GatedModel()
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(model.run, BatchingOptions(), pool)
            running = batcher.submit_nowait(images(1))
            await _started(model)
            late = batcher.submit_nowait(images(3), deadline=asyncio.get_running_loop().time())
            model.gate.set()
            await running
            with pytest.raises(DeadlineExceededError):
                await late
            await batcher.close()
        assert model.sizes == [1]  # the expired request never reached the model
    run(main())


def test_close_finishes_accepted_requests_then_refuses():
    async def main():
        model = GatedModel()
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(model.run, BatchingOptions(max_batch_size=2), pool)
            accepted = [batcher.submit_nowait(images(1)) for _ in range(5)]
            await _started(model)
            closing = asyncio.ensure_future(batcher.close())
            await asyncio.sleep(0)  # one loop turn: close() marks the batcher closed
            with pytest.raises(BatcherClosedError):
                batcher.submit_nowait(images(1))
            model.gate.set()
            await closing
            assert all(f.done() and not f.exception() for f in accepted)
        assert sum(model.sizes) == 5
    run(main())
