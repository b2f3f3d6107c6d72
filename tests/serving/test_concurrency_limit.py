"""`--max-concurrent-rpcs` on both gRPC front ends: past the limit a call is refused at once with
RESOURCE_EXHAUSTED (never queued, never hung), the calls within it are answered, and the server
answers normally once the burst is over."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from tests.serving.conftest import native_server, start_server, tensor_image

LIMIT, BURST = 2, 48


@pytest.fixture(scope="module", params=["grpc", "native"])
def limited_server(request, serving_store, tmp_path_factory):
    log = tmp_path_factory.mktemp("limit") / f"{request.param}.log"
    args = ["--poll-seconds", "0", "--max-concurrent-rpcs", str(LIMIT)]
    server = (native_server if request.param == "native" else start_server)(serving_store, log, *args)
    yield server
    code, counts = server.stop()
    assert code == 0, server.log_text()


def test_calls_past_the_limit_are_refused_at_once(limited_server, clean_images):
    request = guard_pb2.ClassifyRequest(image=tensor_image(clean_images[0][0]))

    async def main():
        async with grpc.aio.insecure_channel(limited_server.target) as channel:
            stub = guard_pb2_grpc.GuardedClassifierStub(channel)
            await stub.Classify(request, timeout=30)  # connected and warm

            async def call():
                try:
                    await stub.Classify(request, timeout=30)
                    return "OK"
                except grpc.aio.AioRpcError as err:
                    return err.code().name

            codes = await asyncio.gather(*(call() for _ in range(BURST)))
            after = await stub.Classify(request, timeout=30)
            return codes, after

    codes, after = asyncio.run(main())
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes.count("OK") >= LIMIT
    assert after.class_name
