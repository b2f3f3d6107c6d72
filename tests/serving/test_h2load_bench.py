"""bench/h2load.py against the shared server: good calls counted from their bodies, gRPC errors
(HTTP 200 with trailers only) counted as errors, not as fast successes."""
from __future__ import annotations

import shutil
import time

import grpc
import pytest

from bench import h2load
from bench.loadgen import LoadResult
from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from tests.serving.test_load import unary_requests

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load missing: apt-get install nghttp2-client")


def test_h2load_counts_good_answers_and_grpc_errors(server, clean_images):
    request = unary_requests(clean_images[0][:1])[0]
    with grpc.insecure_channel(server.target) as channel:
        answer = len(guard_pb2_grpc.GuardedClassifierStub(channel).Classify(request, timeout=30).SerializeToString())
    method = "/advguard.v1.GuardedClassifier/Classify"

    good = h2load.grpc_load(server.target, method, request.SerializeToString(), answer, 200, 8)
    assert good.codes == {"OK": 200}
    assert len(good.latencies) == 200 and good.rate > 0 and 0 < good.percentile(50) <= good.percentile(99)

    unknown = guard_pb2.ClassifyRequest(model="no-such-model", image=request.image).SerializeToString()
    bad = h2load.grpc_load(server.target, method, unknown, answer, 50, 4)
    assert bad.ok == 0 and bad.codes["gRPC error (no body)"] == 50


def test_server_probe_reports_cpu_per_call_loop_share_and_the_batches_the_load_made(server, clean_images):
    from bench.probe import ServerProbe

    request = unary_requests(clean_images[0][:1])[0]
    with grpc.insecure_channel(server.target) as channel:
        answer = len(guard_pb2_grpc.GuardedClassifierStub(channel).Classify(request, timeout=30).SerializeToString())
    probe = ServerProbe(server.proc.pid, server.metrics_port, "fmnist-guarded")
    images, batches = probe.batches()
    spent = probe.measure(lambda: h2load.grpc_load(server.target, "/advguard.v1.GuardedClassifier/Classify",
                                                   request.SerializeToString(), answer, 400, 16))
    images_after, batches_after = probe.batches()
    assert spent["result"].ok == 400 and images_after - images >= 400  # every call's image went through a batch
    assert spent["mean_batch"] == (images_after - images) / (batches_after - batches)
    assert 1 <= spent["mean_batch"] <= 16  # no batch larger than the calls in flight
    assert spent["server_cpu_us"] > 0
    assert 0 < spent["loop_cpu_us"] <= spent["server_cpu_us"]  # the event loop is one of the server's threads
    assert 0 < spent["loop_busy"] <= 1.05  # one thread: at most one core (clock ticks round)
    quiet = probe.measure(lambda: LoadResult(seconds=(time.sleep(0.5), 0.5)[1]))  # no calls: an idle loop
    # relative, not a fixed share: another process holding a core lowers the loaded loop's share too
    assert quiet["loop_busy"] < 0.2 and spent["loop_busy"] > 3 * quiet["loop_busy"]
