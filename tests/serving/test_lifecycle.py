"""Hot reload and SIGTERM, each under load, each on its own server process."""
from __future__ import annotations

import asyncio
import json
import shutil
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.loadgen import run_load
from protos.advguard.v1 import guard_pb2, guard_pb2_grpc


def request_for(clean_images) -> guard_pb2.ClassifyRequest:
    return guard_pb2.ClassifyRequest(model="fmnist-guarded", image=guard_pb2.Image(tensor=guard_pb2.Tensor(
        shape=[1, 28, 28], dtype=guard_pb2.DTYPE_UINT8, data=clean_images[0][0].tobytes())))


def test_hot_reload_under_load_fails_no_request(guarded_bundle, tools, clean_images, tmp_path):
    store = tmp_path / "store"
    tools.clone_bundle(guarded_bundle, store, "fmnist-guarded", "1")
    server = tools.start_server(store, tmp_path / "server.log", "--poll-seconds", "0.2")
    request = request_for(clean_images)
    seen: list[str] = []

    async def main():
        stop, saw_v2 = asyncio.Event(), asyncio.Event()
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = guard_pb2_grpc.GuardedClassifierStub(channel)

            async def call(i):
                reply = await stub.Classify(request, timeout=60)
                seen.append(reply.model_version)
                if reply.model_version == "2":
                    saw_v2.set()

            async def operator():
                await asyncio.to_thread(tools.clone_bundle, guarded_bundle, store, "fmnist-guarded", "2")
                await asyncio.wait_for(saw_v2.wait(), 60)
                # a tampered version 3 is refused; version 1 disappears and is unloaded
                bad = store / "fmnist-guarded" / ".3"
                shutil.copytree(store / "fmnist-guarded" / "2", bad)
                (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes() + b"tampered")
                manifest = json.loads((bad / "manifest.json").read_text())
                (bad / "manifest.json").write_text(json.dumps({**manifest, "version": "3"}))
                bad.rename(store / "fmnist-guarded" / "3")
                shutil.rmtree(store / "fmnist-guarded" / "1")
                while True:  # until version 1 is unloaded (each probe is a real call)
                    try:
                        await stub.GetModel(guard_pb2.GetModelRequest(name="fmnist-guarded", version="1"))
                    except grpc.aio.AioRpcError as err:
                        assert err.code() == grpc.StatusCode.NOT_FOUND
                        break
                    await asyncio.sleep(0.1)
                info = await stub.GetModel(guard_pb2.GetModelRequest(name="fmnist-guarded"))
                stop.set()
                return info

            load, info = await asyncio.gather(run_load(call, 1_000_000, 8, stop), operator())
            return load, info

    try:
        load, info = asyncio.run(main())
    finally:
        code, counts = server.stop()
    assert load.errors == 0, (load.codes, load.details)
    assert seen[0] == "1" and seen[-1] == "2" and load.ok > 20
    assert list(info.versions) == ["2"]  # 3 refused, 1 unloaded
    assert code == 0 and "SHA-256" in server.log_text() and "not loading" in server.log_text()


def test_sigterm_under_load_loses_no_accepted_request(secure_server, clean_images):
    server, cert, _ = secure_server
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    request = request_for(clean_images)
    auth = (("authorization", "Bearer s3cret-token"),)

    async def main():
        stop, warmed = asyncio.Event(), asyncio.Event()
        async with grpc.aio.secure_channel(server.target, credentials) as channel:
            stub = guard_pb2_grpc.GuardedClassifierStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Classify(request, metadata=(("authorization", "Bearer wrong"),))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in caught.value.details()
            health = health_pb2_grpc.HealthStub(channel)  # open without a token (for probes)
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
            answered = 0

            async def call(i):
                nonlocal answered
                try:
                    await stub.Classify(request, metadata=auth, timeout=60)
                except grpc.aio.AioRpcError as err:
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        stop.set()  # the server has stopped accepting: wind down
                    raise
                answered += 1
                if answered == 300:
                    warmed.set()

            async def operator():
                await warmed.wait()
                server.proc.send_signal(signal.SIGTERM)  # SIGTERM with 32 calls in flight

            load, _ = await asyncio.gather(run_load(call, 1_000_000, 32, stop), operator())
            return load

    load = asyncio.run(main())
    code, counts = server.stop()
    assert code == 0, server.log_text()
    assert set(load.codes) <= {"OK", "UNAVAILABLE"}, (load.codes, load.details)
    # every call the server accepted was answered, and the client got every answer; calls that
    # came after SIGTERM were refused with UNAVAILABLE (by the server while draining, or by the
    # closed port), never cancelled
    assert counts.pop("OK") == load.ok + 1 and counts.pop("UNAUTHENTICATED") == 1
    assert set(counts) <= {"UNAVAILABLE"} and counts.get("UNAVAILABLE", 0) <= load.codes["UNAVAILABLE"]
    assert load.ok >= 300 and "finishing" in server.log_text()
