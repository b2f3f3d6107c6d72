"""A flood of decompression-heavy images does not stall ordinary callers: while one client keeps
sending batches of large PNGs (a few KB each, millions of pixels once decoded), another's
ordinary calls keep their latency and health checks keep answering. Decoding runs in its own
thread, off the event loop and off the model threads, so an ordinary call never waits for a flood
image's decoding: the ordinary calls' p99 under the flood stays below the time the server takes
per flood image (a flood batch's median latency over its images), measured in the same run, so
the bound follows the machine's load instead of a figure taken on a quiet machine."""
from __future__ import annotations

import io
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc

pytestmark = pytest.mark.slow


def heavy_png(side: int = 2048) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.indices((side, side)).sum(axis=0) % 7 * 30).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def latencies(stub, request, n: int) -> np.ndarray:
    out = []
    for _ in range(n):
        began = time.perf_counter()
        stub.Classify(request, timeout=30)
        out.append(time.perf_counter() - began)
    return np.array(out)


def test_ordinary_calls_and_health_survive_a_decoding_flood(serving_store, tmp_path, tools, clean_images):
    server = tools.start_server(serving_store, tmp_path / "server.log", "--poll-seconds", "0",
                                "--default-model", "fmnist-guarded")
    x = clean_images[0][0]
    ordinary = guard_pb2.ClassifyRequest(image=guard_pb2.Image(tensor=guard_pb2.Tensor(
        shape=[1, 28, 28], dtype=guard_pb2.DTYPE_UINT8, data=x.tobytes())))
    bomb = heavy_png()
    assert len(bomb) < 64 * 1024  # small on the wire, 4 Mpx to decode
    flood = guard_pb2.ClassifyBatchRequest(images=[guard_pb2.Image(encoded=bomb)] * 4)
    stop = threading.Event()
    flooded = []

    def flooder() -> None:
        with grpc.insecure_channel(server.target) as channel:
            flood_stub = guard_pb2_grpc.GuardedClassifierStub(channel)
            while not stop.is_set():
                began = time.perf_counter()
                flood_stub.ClassifyBatch(flood, timeout=60)
                flooded.append(time.perf_counter() - began)

    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = guard_pb2_grpc.GuardedClassifierStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            latencies(stub, ordinary, 20)  # warm up
            unloaded = latencies(stub, ordinary, 200)
            threads = [threading.Thread(target=flooder, daemon=True) for _ in range(2)]
            for t in threads:
                t.start()
            while not flooded:  # the flood is under way
                time.sleep(0.05)
            loaded = latencies(stub, ordinary, 200)
            for _ in range(5):
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stop.set()
            for t in threads:
                t.join(timeout=120)
    finally:
        stop.set()
        server.stop()
    p99_unloaded, p99_loaded = np.percentile(unloaded, 99), np.percentile(loaded, 99)
    per_image = np.median(flooded) / len(flood.images)
    assert len(flooded) >= 2, "the flood never got going"
    assert p99_loaded < per_image, (f"ordinary p99 {p99_loaded * 1e3:.1f} ms under the flood (unloaded "
                                    f"{p99_unloaded * 1e3:.1f} ms) is not below the {per_image * 1e3:.1f} ms the "
                                    f"server takes per flood image ({len(flooded)} flood batches)")
