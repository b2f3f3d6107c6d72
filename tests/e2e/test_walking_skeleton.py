"""End to end, through the real CLI and a real server process on loopback:
train (small subset) -> export -> serve -> classify over gRPC -> metrics."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from tests.support import encode_image, free_port

ADVGUARD = [sys.executable, "-m", "advguard.cli.main"]
ROOT = Path(__file__).resolve().parents[2]



def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ADVGUARD, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def histogram_count(metrics_port: int, method: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    pattern = rf'advguard_request_latency_seconds_count\{{[^}}]*method="{method}"[^}}]*\}} ([0-9.e+]+)'
    return sum(float(v) for v in re.findall(pattern, text))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    trained = run_cli("train", "--model", "fmnist-cnn", "--epochs", "1", "--limit-train", "3000",
                      "--limit-test", "500", "--out", str(work / "run"))
    assert trained.returncode == 0, trained.stderr
    exported = run_cli("export", "--run", str(work / "run"), "--name", "e2e", "--store", str(work / "store"))
    assert exported.returncode == 0, exported.stderr
    port, metrics_port = free_port(), free_port()
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([*ADVGUARD, "serve", "--store", str(work / "store"), "--port", str(port),
                             "--metrics-port", str(metrics_port)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="advguard.v1.GuardedClassifier"),
                         wait_for_ready=True, timeout=60)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    yield {"port": port, "metrics_port": metrics_port, "channel": channel, "proc": proc, "work": work}
    channel.close()
    proc.terminate()
    proc.wait(timeout=30)
    log.close()



def test_classify_counts_exactly_in_histogram(served, fmnist_small):
    stub = guard_pb2_grpc.GuardedClassifierStub(served["channel"])
    before = histogram_count(served["metrics_port"], "Classify")
    n, correct = 40, 0
    for i in range(n):
        request = guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=encode_image(fmnist_small.test.x[i, 0].numpy())))
        reply = stub.Classify(request, timeout=10)
        correct += reply.class_index == int(fmnist_small.test.y[i])
        assert reply.model == "e2e" and reply.model_version == "1"
        assert abs(sum(reply.probabilities) - 1.0) < 1e-4
        assert reply.class_name == fmnist_small.labels[reply.class_index]
    assert correct / n >= 0.6  # one epoch on 3,000 images
    assert histogram_count(served["metrics_port"], "Classify") - before == n


def test_raw_tensor_matches_png(served, fmnist_small):
    stub = guard_pb2_grpc.GuardedClassifierStub(served["channel"])
    pixels = (fmnist_small.test.x[0].numpy() * 255).round().astype(np.uint8)
    tensor = guard_pb2.Tensor(shape=[1, 28, 28], dtype=guard_pb2.DTYPE_UINT8, data=pixels.tobytes())
    by_tensor = stub.Classify(guard_pb2.ClassifyRequest(image=guard_pb2.Image(tensor=tensor)), timeout=10)
    by_png = stub.Classify(guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=encode_image(pixels[0] / 255.0))), timeout=10)
    assert by_tensor.class_index == by_png.class_index
    assert np.allclose(by_tensor.probabilities, by_png.probabilities, atol=1e-6)


def test_bad_image_bytes_are_invalid_argument(served):
    stub = guard_pb2_grpc.GuardedClassifierStub(served["channel"])
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=b"\x89PNG not really")), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a PNG or JPEG" in err.value.details()


def test_unknown_model_is_not_found(served):
    stub = guard_pb2_grpc.GuardedClassifierStub(served["channel"])
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(guard_pb2.ClassifyRequest(model="nope", image=guard_pb2.Image(encoded=b"x")), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown model 'nope'; loaded: e2e" in err.value.details()


def test_classify_cli_prints_class_per_image(served, fmnist_small, tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(encode_image(fmnist_small.test.x[i, 0].numpy()))
        paths.append(str(path))
    result = run_cli("classify", "--target", f"127.0.0.1:{served['port']}", *paths)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, paths):
        name, index, label, prob, _verdict = line.split("\t")
        assert name == path and label == fmnist_small.labels[int(index)] and 0 < float(prob) <= 1


def test_missing_data_cli_error_names_the_fix(tmp_path):
    result = run_cli("data", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "run `make data`" in result.stderr and "--data-dir" in result.stderr
