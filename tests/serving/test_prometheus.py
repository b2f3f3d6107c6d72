"""deploy/prometheus passes promtool, and a real Prometheus scrapes the server and answers a
latency quantile query through its HTTP API."""
from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from tests.support import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
QUERY = ('histogram_quantile(0.99, sum by (le) (rate(advguard_request_latency_seconds_bucket'
         '{method="Classify", model="fmnist-guarded"}[30s])))')


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: sudo apt-get install prometheus")
@pytest.mark.parametrize("args", [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                                  ["test", "rules", "alerts_test.yml"]])
def test_promtool_accepts_the_deploy_files(args):
    done = subprocess.run([PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr



def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing: sudo apt-get install prometheus")
def test_real_prometheus_scrapes_and_answers_the_p99_query(server, clean_images, tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: advguard\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{server.metrics_port}']\n")
    port = free_port()
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    api = f"http://127.0.0.1:{port}/api/v1"
    request = guard_pb2.ClassifyRequest(image=guard_pb2.Image(tensor=guard_pb2.Tensor(
        shape=[1, 28, 28], dtype=guard_pb2.DTYPE_UINT8, data=clean_images[0][0].tobytes())))

    async def traffic_until_answered() -> float:
        """Keep classifying while asking Prometheus, until the quantile is a number."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + 90
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = guard_pb2_grpc.GuardedClassifierStub(channel)
            while time.monotonic() < deadline:
                await asyncio.gather(*(stub.Classify(request, timeout=30) for _ in range(20)))
                try:
                    reply = await loop.run_in_executor(
                        None, get_json, f"{api}/query?query={urllib.parse.quote(QUERY)}")
                except OSError:  # Prometheus still starting
                    continue
                result = reply["data"]["result"]
                if result and not math.isnan(float(result[0]["value"][1])):
                    return float(result[0]["value"][1])
        raise AssertionError("Prometheus never answered the p99 query with a number")

    try:
        p99 = asyncio.run(traffic_until_answered())
        targets = get_json(f"{api}/targets")["data"]["activeTargets"]
    finally:
        prom.terminate()
        prom.wait(timeout=30)
    assert 0 < p99 < 10
    assert targets[0]["health"] == "up"
