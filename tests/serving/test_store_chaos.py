"""Hot reload when the store misbehaves: versions copied file by file (manifest first), a store
folder that vanishes for a moment, versions overwritten in place, symbolic links and FIFOs
named as model files. The last good version keeps serving, nothing accepted fails, health
tells the truth, and a bad version is refused (a log line naming why) until it is fixed."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.loadgen import run_load
from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from serving.engine import EngineOptions
from serving.metrics import Metrics
from serving.runtime.batcher import BatchingOptions
from serving.runtime.models import ModelManager
from tests.serving.tiny_bundles import manifest_for, tiny_onnx, write_bundle

X = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def manager(store) -> ModelManager:
    return ModelManager(store, EngineOptions(threads=1, cpu_only=True), BatchingOptions(), Metrics(),
                        retire_seconds=0)


def manifest_bytes(name: str, version: str, model: bytes) -> bytes:
    return json.dumps(manifest_for(name, version, {"model.onnx": model})).encode()


def test_a_version_copied_manifest_first_is_retried_until_it_verifies(tmp_path):
    write_bundle(tmp_path, "tiny", "1")
    model = tiny_onnx(seed=2)

    async def main():
        models = manager(tmp_path)
        await models.load_all()
        folder = tmp_path / "tiny" / "2"
        folder.mkdir()
        (folder / "manifest.json").write_bytes(manifest_bytes("tiny", "2", model))  # as cp -r does
        assert await models.refresh() == ([], [])  # model.onnx missing: refused
        (folder / "model.onnx").write_bytes(model[: len(model) // 2])
        assert await models.refresh() == ([], [])  # half copied: refused again (it changed)
        with open(folder / "model.onnx", "ab") as rest:
            rest.write(model[len(model) // 2:])
        assert await models.refresh() == (["tiny/2"], [])
        refused = models.metrics.registry.get_sample_value("advguard_model_loads_total",
                                                          {"model": "tiny", "outcome": "refused"})
        await models.close()
        return refused

    assert asyncio.run(main()) == 2


def test_a_store_missing_for_a_moment_unloads_nothing(tmp_path):
    store = tmp_path / "store"
    write_bundle(store, "tiny", "1")

    async def main():
        models = manager(store)
        await models.load_all()
        served = models.repo.get("tiny")
        store.rename(tmp_path / "away")
        assert await models.refresh() == ([], [])
        assert models.repo.get("tiny") is served
        assert len((await served.batcher.submit(X)).classes) == 2  # still answering
        (tmp_path / "away").rename(store)
        assert await models.refresh() == ([], [])  # back: nothing changed, nothing reloaded
        assert models.repo.get("tiny") is served
        failures = models.metrics.registry.get_sample_value("advguard_store_scan_failures_total")
        await models.close()
        return failures

    assert asyncio.run(main()) == 1


def test_a_version_overwritten_in_place_is_verified_again_and_swapped_in(tmp_path):
    folder = write_bundle(tmp_path, "tiny", "1")
    new = tiny_onnx(seed=3)

    async def main():
        models = manager(tmp_path)
        await models.load_all()
        old = models.repo.get("tiny", "1")
        before = (await old.batcher.submit(X)).probs
        os.utime(folder / "model.onnx")  # touched, not changed: verified again, not swapped
        assert await models.refresh() == ([], []) and models.repo.get("tiny", "1") is old
        (folder / "model.onnx").write_bytes(new)  # in place; the manifest still names the old bytes
        assert await models.refresh() == ([], [])
        assert models.repo.get("tiny", "1") is old  # the loaded copy keeps serving
        (folder / "manifest.json").write_bytes(manifest_bytes("tiny", "1", new))
        assert await models.refresh() == (["tiny/1"], [])
        swapped = models.repo.get("tiny", "1")
        after = (await swapped.batcher.submit(X)).probs
        assert swapped.bundle.primary.sha256 == hashlib.sha256(new).hexdigest()
        await models.drained()
        assert old.executor._shutdown and not swapped.executor._shutdown
        await models.close()
        return before, after

    before, after = asyncio.run(main())
    assert not np.allclose(before, after)


def test_a_loaded_version_without_its_manifest_for_a_moment_is_kept(tmp_path):
    folder = write_bundle(tmp_path, "tiny", "1")

    async def main():
        models = manager(tmp_path)
        await models.load_all()
        served = models.repo.get("tiny")
        (folder / "manifest.json").rename(tmp_path / "manifest.json")
        assert await models.refresh() == ([], [])
        assert models.repo.get("tiny") is served
        (tmp_path / "manifest.json").rename(folder / "manifest.json")
        assert await models.refresh() == ([], []) and models.repo.get("tiny") is served
        await models.close()

    asyncio.run(main())


def test_poll_reports_when_no_model_is_left_and_when_one_is_back(tmp_path):
    write_bundle(tmp_path, "tiny", "1")

    async def main():
        models = manager(tmp_path)
        await models.load_all()
        changes: asyncio.Queue = asyncio.Queue()
        poller = asyncio.create_task(models.poll(0.05, on_change=changes.put))
        shutil.rmtree(tmp_path / "tiny")
        assert await asyncio.wait_for(changes.get(), 30) is False
        write_bundle(tmp_path, "tiny", "2")
        assert await asyncio.wait_for(changes.get(), 30) is True
        poller.cancel()
        await models.close()

    asyncio.run(main())


async def until(check, what: str, timeout: float = 90.0) -> None:
    """Poll `check()` (a condition on the server's observable state) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_chaos_in_the_store_never_fails_a_call(tools, tmp_path):
    store = tmp_path / "store"
    write_bundle(store, "tiny", "1")
    server = tools.start_server(store, tmp_path / "server.log", "--poll-seconds", "0.2", "--default-model", "tiny")
    request = guard_pb2.ClassifyRequest(model="tiny", image=guard_pb2.Image(tensor=guard_pb2.Tensor(
        shape=[1, 28, 28], dtype=guard_pb2.DTYPE_UINT8, data=bytes(28 * 28))))
    seen: list[str] = []
    statuses: list[int] = []
    log = server.log_text

    def refused(version: str, reason: str) -> bool:
        return any(f"tiny/{version}" in line and reason in line
                   for line in log().splitlines() if "not loading" in line)

    async def main():
        stop = asyncio.Event()
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = guard_pb2_grpc.GuardedClassifierStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def check_health() -> int:
                status = (await health.Check(health_pb2.HealthCheckRequest(service="advguard.v1.GuardedClassifier"))).status
                statuses.append(status)
                return status

            async def call(i):
                seen.append((await stub.Classify(request, timeout=60)).model_version)

            async def calls_go_on() -> None:
                n = len(seen)
                await until(lambda: len(seen) > n + 10, "more answers")

            async def operator():
                await until(lambda: "1" in seen, "answers from version 1")
                # version 2 copied in place, manifest first (cp -r, rsync, tar do this)
                model2 = tiny_onnx(seed=2)
                v2 = store / "tiny" / "2"
                v2.mkdir()
                (v2 / "manifest.json").write_bytes(manifest_bytes("tiny", "2", model2))
                (v2 / "model.onnx").write_bytes(model2[:1000])
                await until(lambda: refused("2", "SHA-256"), "version 2 refused while half copied")
                with open(v2 / "model.onnx", "ab") as rest:
                    rest.write(model2[1000:])
                await until(lambda: seen[-1] == "2", "version 2 served once complete")
                # the store folder renamed away and back
                store.rename(tmp_path / "away")
                await until(lambda: "cannot be listed" in log(), "a failed scan")
                await calls_go_on()
                assert await check_health() == SERVING
                (tmp_path / "away").rename(store)
                # version 3 whose model file is a symbolic link (to the right bytes)
                model3 = tiny_onnx(seed=3)
                (tmp_path / "model3.onnx").write_bytes(model3)
                v3 = store / "tiny" / "3"
                v3.mkdir()
                (v3 / "model.onnx").symlink_to(tmp_path / "model3.onnx")
                (v3 / "manifest.json").write_bytes(manifest_bytes("tiny", "3", model3))
                await until(lambda: refused("3", "symbolic link"), "version 3 refused (a symlink)")
                await calls_go_on()
                assert seen[-1] == "2"
                (v3 / ".model.tmp").write_bytes(model3)
                (v3 / ".model.tmp").replace(v3 / "model.onnx")
                await until(lambda: seen[-1] == "3", "version 3 served once a regular file")
                # version 4 whose model file is a FIFO: refused at once, the poller goes on
                model4 = tiny_onnx(seed=4)
                v4 = store / "tiny" / "4"
                v4.mkdir()
                os.mkfifo(v4 / "model.onnx")
                (v4 / "manifest.json").write_bytes(manifest_bytes("tiny", "4", model4))
                await until(lambda: refused("4", "FIFO"), "version 4 refused (a FIFO)")
                await calls_go_on()
                assert await check_health() == SERVING and seen[-1] == "3"
                (v4 / ".model.tmp").write_bytes(model4)
                (v4 / ".model.tmp").replace(v4 / "model.onnx")
                await until(lambda: seen[-1] == "4", "version 4 served once a regular file")
                # version 4 overwritten in place: verified again and swapped in
                model5 = tiny_onnx(seed=5)
                (v4 / "model.onnx").write_bytes(model5)
                (v4 / "manifest.json").write_bytes(manifest_bytes("tiny", "4", model5))
                sha5 = hashlib.sha256(model5).hexdigest()
                while (await stub.GetModel(guard_pb2.GetModelRequest(name="tiny"))).files[0].sha256 != sha5:
                    await asyncio.sleep(0.05)
                await calls_go_on()
                stop.set()

            load, _ = await asyncio.gather(run_load(call, 1_000_000, 4, stop), operator())
            # every version removed: health says so; one back: SERVING again
            shutil.rmtree(store / "tiny")
            while await check_health() != NOT_SERVING:
                await asyncio.sleep(0.05)
            write_bundle(store, "tiny", "6")
            while await check_health() != SERVING:
                await asyncio.sleep(0.05)
            reply = await stub.Classify(request, timeout=60)
            return load, reply

    try:
        load, reply = asyncio.run(main())
    finally:
        code, _ = server.stop()
    assert load.errors == 0, (load.codes, load.details)
    assert load.ok > 50 and reply.model_version == "6"
    assert sorted(set(seen)) == ["1", "2", "3", "4"]  # every good version served, no refused one
    assert statuses.count(SERVING) >= 3 and NOT_SERVING in statuses
    assert code == 0, log()
    assert "changed in place" in log()
