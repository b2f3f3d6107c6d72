"""Each served bundle version runs on model threads of its own (one per instance), created and
shut down with it: a long batch of one model never holds up another."""
from __future__ import annotations

import asyncio
import shutil
import threading

import numpy as np

from serving.engine import EngineOptions
from serving.metrics import Metrics
from serving.runtime.batcher import BatchingOptions
from serving.runtime.models import ModelManager
from tests.serving.tiny_bundles import write_bundle

X = np.zeros((1, 1, 28, 28), dtype=np.float32)


def manager(store) -> ModelManager:
    return ModelManager(store, EngineOptions(threads=1, cpu_only=True), BatchingOptions(instances=1), Metrics(),
                        retire_seconds=0)


def test_a_busy_model_does_not_hold_up_another(tmp_path):
    write_bundle(tmp_path, "busy", "1")
    write_bundle(tmp_path, "other", "1", seed=1)

    async def main():
        models = manager(tmp_path)
        await models.load_all()
        busy, other = models.repo.get("busy"), models.repo.get("other")
        release, started = threading.Event(), threading.Event()

        def long_batch():  # stands in for a 4,096-image run: holds busy's only model thread
            started.set()
            release.wait(60)

        held = busy.batcher.executor.submit(long_batch)
        await asyncio.to_thread(started.wait, 30)
        try:
            result = await asyncio.wait_for(other.batcher.submit(X), 30)  # answered meanwhile
            assert not held.done()
        finally:
            release.set()
        await asyncio.wait_for(busy.batcher.submit(X), 30)
        await models.close()
        return result

    assert len(asyncio.run(main()).classes) == 1


def test_a_version_s_threads_stop_when_it_is_unloaded(tmp_path):
    write_bundle(tmp_path, "tiny", "1")
    write_bundle(tmp_path, "tiny", "2")

    async def main():
        models = manager(tmp_path)
        await models.load_all()
        one, two = models.repo.get("tiny", "1"), models.repo.get("tiny", "2")
        assert one.executor is not two.executor and one.executor._max_workers == 1
        await one.batcher.submit(X)
        shutil.rmtree(tmp_path / "tiny" / "1")
        assert await models.refresh() == ([], ["tiny/1"])
        await models.drained()
        try:
            one.executor.submit(print)
        except RuntimeError as err:
            shut = "shutdown" in str(err)
        else:
            shut = False
        assert shut and not two.executor._shutdown
        await models.close()
        assert two.executor._shutdown

    asyncio.run(main())
