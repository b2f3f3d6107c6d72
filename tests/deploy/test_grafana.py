"""deploy/grafana: the committed dashboard is the generator's output, and against a real server
after some traffic every metric its panels name is in the scrape and every panel query answers
through a real Prometheus."""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import grpc
import pytest

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from tests.deploy.conftest import DEPLOY
from tests.support import encode_image, free_port

DASHBOARD = DEPLOY / "grafana" / "advguard.json"
# Grafana's variables, as a dashboard viewer would have them: every model, Prometheus' ranges
VARIABLES = {"$model": ".*", "$__rate_interval": "30s", "$__range": "5m"}


def panel_queries() -> dict[str, list[str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in panels}


def test_committed_dashboard_is_the_generators_output():
    done = subprocess.run([sys.executable, str(DEPLOY / "grafana" / "dashboard.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_dashboard_has_the_panels_and_the_provisioned_datasource():
    titles = set(panel_queries())
    assert titles == {"Request rate by method and code", "Classification latency", "Verdict mix",
                      "Flags per detector", "Queue depth and calls in flight", "Batch size", "Models loaded",
                      "Bundle loads and refusals"}
    latency = " ".join(panel_queries()["Classification latency"])
    assert all(f"histogram_quantile({q}," in latency for q in ("0.5", "0.95", "0.99"))
    provisioned = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    uids = {p["datasource"]["uid"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    assert uids == {"prometheus"} and "uid: prometheus" in provisioned


def traffic(target: str, image: bytes, rounds: int = 1) -> None:
    """Guarded, rejected (every image flagged) and batched calls, so that every series exists."""
    async def run() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = guard_pb2_grpc.GuardedClassifierStub(channel)
            img = guard_pb2.Image(encoded=image)
            for _ in range(rounds):
                await asyncio.gather(*(stub.Classify(guard_pb2.ClassifyRequest(model=m, image=img), timeout=30)
                                       for m in ("fmnist-guarded", "fmnist-reject", "fmnist-plain") for _ in range(8)))
                await stub.ClassifyBatch(guard_pb2.ClassifyBatchRequest(model="fmnist-guarded", images=[img] * 16),
                                         timeout=30)
    asyncio.run(run())


def resolve(query: str) -> str:
    for name, value in VARIABLES.items():
        query = query.replace(name, value)
    return query


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


@pytest.mark.slow
def test_every_panel_query_answers_from_a_real_prometheus(server, clean_images, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus missing: run `make prometheus` (Debian's prometheus)")
    image = encode_image(clean_images[0][0, 0])
    traffic(server.target, image)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as reply:
        scraped = {line.split("{")[0].split(" ")[0] for line in reply.read().decode().splitlines()
                   if line and not line.startswith("#")}
    queries = [q for qs in panel_queries().values() for q in qs]
    named = {m for q in queries for m in re.findall(r"\badvguard_\w+", q)}
    assert named - scraped == set(), "metrics the dashboard names that the server does not export"

    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: advguard\n"
                      f"    static_configs:\n      - targets: ['127.0.0.1:{server.metrics_port}']\n")
    port = free_port()
    prom = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    pending = {resolve(q) for q in queries}
    deadline = time.monotonic() + 120
    try:
        while pending and time.monotonic() < deadline:
            traffic(server.target, image)
            for q in sorted(pending):
                try:
                    reply = get_json(f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(q)}")
                except OSError:  # still starting
                    break
                assert reply["status"] == "success", (q, reply)
                if reply["data"]["result"]:
                    pending.discard(q)
            time.sleep(0.5)
    finally:
        prom.terminate()
        prom.wait(timeout=30)
    assert not pending, f"queries that never returned a result: {sorted(pending)}"
