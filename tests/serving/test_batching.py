"""The dynamic batcher: batches gather waiting requests, the queue is bounded, deadlines and
close() are honoured. The model is held busy with a threading.Event, never with sleeps."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.runtime.batch_wait import GAP_FRACTION, BatchWait
from serving.runtime.batcher import (
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


def test_a_lone_request_never_waits_for_a_fuller_batch():
    async def main():
        model = GatedModel()
        model.gate.set()
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(model.run, BatchingOptions(max_queue_delay_us=60_000_000), pool)
            for _ in range(3):  # one at a time: each one's previous batch held one image
                await asyncio.wait_for(batcher.submit(images(1)), 30)
            await batcher.close()
        assert model.sizes == [1, 1, 1]
    run(main())


def test_under_load_a_free_instance_waits_until_the_batch_is_as_large_as_recent_ones():
    async def main():
        model = GatedModel()
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(model.run, BatchingOptions(max_batch_size=8, max_queue_delay_us=60_000_000), pool)
            first = batcher.submit_nowait(images(1))
            await _started(model)
            four = [batcher.submit_nowait(images(1)) for _ in range(4)]  # queue while busy: a batch of 4
            model.gate.set()
            await asyncio.gather(first, *four)
            two = [batcher.submit_nowait(images(1)) for _ in range(2)]
            for _ in range(20):  # loop turns: nothing runs while fewer than 4 wait (the delay is a minute)
                await asyncio.sleep(0)
            assert model.sizes == [1, 4] and batcher.queued == 2
            two += [batcher.submit_nowait(images(1)) for _ in range(2)]  # 4 waiting: it runs at once
            await asyncio.wait_for(asyncio.gather(*two), 30)
            await batcher.close()
        assert model.sizes == [1, 4, 4]
    run(main())


def test_the_wait_for_a_fuller_batch_ends_when_requests_stop_coming():
    async def main():
        loop = asyncio.get_running_loop()
        model = GatedModel()
        with ThreadPoolExecutor(1) as pool:
            options = BatchingOptions(max_batch_size=8, max_queue_delay_us=4_000_000)
            batcher = DynamicBatcher(model.run, options, pool)
            first = batcher.submit_nowait(images(1))
            await _started(model)
            two = [batcher.submit_nowait(images(1)) for _ in range(2)]
            model.gate.set()
            await asyncio.gather(first, *two)
            began = loop.time()
            await asyncio.wait_for(batcher.submit(images(1)), 30)  # waits for a second one that never comes
            waited = loop.time() - began
            await batcher.close()
        assert model.sizes == [1, 2, 1]
        assert 4.0 / GAP_FRACTION <= waited < 3.5  # a quiet gap ends the wait, not the 4 s delay
    run(main())


def test_stepwise_run_keeps_its_python_on_the_loop_and_its_blocking_calls_in_the_executor():
    threads: dict[str, set[int]] = {"steps": set(), "calls": set()}

    def model_call(x):
        threads["calls"].add(threading.get_ident())
        if np.isnan(x).any():
            raise ValueError("NaN in the batch")
        return Rows(x[:, 0, 0, 0] * 2)

    def steps(x, guard):
        threads["steps"].add(threading.get_ident())
        try:
            rows = yield lambda: model_call(x)
        except ValueError:
            rows = yield lambda: model_call(np.zeros_like(x))  # a step may recover from a failed call
        threads["steps"].add(threading.get_ident())
        return rows

    def broken(x, guard):
        yield lambda: model_call(x)
        raise RuntimeError("the run itself failed")

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(steps, BatchingOptions(), pool)
            pair = [batcher.submit_nowait(images(1, 0.25)) for _ in range(2)]  # one batch of two requests
            assert [r.values.tolist() for r in await asyncio.gather(*pair)] == [[0.5], [0.5]]
            pair = [batcher.submit_nowait(images(1, v)) for v in (0.25, np.nan)]
            assert [r.values.tolist() for r in await asyncio.gather(*pair)] == [[0.0], [0.0]]
            await batcher.close()
            failing = DynamicBatcher(broken, BatchingOptions(max_queue_delay_us=0), pool)
            both = [failing.submit_nowait(images(1)) for _ in range(2)]
            for future in both:
                with pytest.raises(RuntimeError, match="the run itself failed"):
                    await future
            await failing.close()

    run(main())
    assert threads["steps"] == {threading.get_ident()}
    assert threads["calls"] and threading.get_ident() not in threads["calls"]


def test_batch_wait_targets_recent_batch_sizes_and_ends_on_a_quiet_gap():
    wait = BatchWait(max_batch_size=8, max_queue_delay_us=4000)  # gap: 1 ms
    assert not wait.needed(queued=1)  # nothing ran yet: a lone request goes at once
    wait.ran(1)
    assert wait.target() == 1 and not wait.needed(1)
    for images in (3, 12, 5):  # the largest recent batch (capped at max_batch_size) is the target
        wait.ran(images)
    assert wait.target() == 8 and wait.needed(7) and not wait.needed(8)
    wait.arrived(10.0)
    assert wait.begin(10.0) == pytest.approx(10.0 + 0.004 / GAP_FRACTION)  # first check: one gap later
    wait.arrived(10.0008)
    assert wait.next_check(10.001) == pytest.approx(10.0018)  # a request came: wait a gap after it
    assert wait.next_check(10.0018) is None  # quiet for a gap: go
    for t in (10.0025, 10.0033):  # requests keep coming: the delay still ends the wait
        wait.arrived(t)
    assert wait.next_check(10.0039) == pytest.approx(10.004) and wait.next_check(10.0041) is None
    for _ in range(16):  # after 16 lone batches the old large batches are forgotten
        wait.ran(1)
    assert wait.target() == 1


def test_batch_wait_for_full_batches_and_no_delay():
    full = BatchWait(max_batch_size=8, max_queue_delay_us=4000, wait_for_full=True)
    assert full.target() == 8 and full.needed(1)  # lone requests wait too
    never = BatchWait(max_batch_size=8, max_queue_delay_us=0)
    never.ran(5)
    assert not never.needed(1)


def test_a_failing_result_hook_does_not_keep_the_answers_back():
    def broken_counter(result):
        raise RuntimeError("metrics backend down")

    async def main():
        model = GatedModel()
        model.gate.set()
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(model.run, BatchingOptions(), pool, on_result=broken_counter)
            results = await asyncio.wait_for(asyncio.gather(*[batcher.submit(images(1, i / 4)) for i in range(3)]), 30)
            await batcher.close()
        assert [r.values.tolist() for r in results] == [[0.0], [0.25], [0.5]]
    run(main())


def test_a_lone_request_runs_whole_in_the_executor_and_a_batch_runs_stepwise():
    used = []

    def steps(x, guard):
        used.append(("steps", len(x), threading.get_ident()))
        return (yield lambda: Rows(x[:, 0, 0, 0].copy()))

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(steps, BatchingOptions(max_queue_delay_us=0), pool)
            assert (await batcher.submit(images(1, 0.5))).values.tolist() == [0.5]
            three = [batcher.submit_nowait(images(1, i / 4)) for i in range(3)]  # one loop turn: one batch
            assert [r.values.tolist() for r in await asyncio.gather(*three)] == [[0.0], [0.25], [0.5]]
            await batcher.close()

    run(main())
    main_thread = threading.get_ident()
    assert [(kind, n) for kind, n, _ in used] == [("steps", 1), ("steps", 3)]
    assert used[0][2] != main_thread and used[1][2] == main_thread  # lone: whole in the executor


def test_drive_throws_a_failed_call_into_the_steps_as_the_batcher_does():
    from serving.runtime.offload import drive, whole

    def steps(value):
        try:
            return (yield lambda: 1 / value)
        except ZeroDivisionError:
            return (yield lambda: -1.0)

    assert drive(steps(4)) == 0.25 and drive(steps(0)) == -1.0
    assert drive(whole(steps(0))) == -1.0  # all of it as one call, same answer
