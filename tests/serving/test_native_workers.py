"""`advguard serve --front native --workers 2`: both native workers answer (each worker's own
metric file is the witness), the one /metrics adds every call up, SIGTERM under load drains both
(every call OK or refused UNAVAILABLE, every accepted one answered); and a lone native server
does not share a port another server holds (SO_REUSEPORT only for workers)."""
from __future__ import annotations

import asyncio
import signal
import socket

import grpc
import pytest

from bench.loadgen import run_load
from protos.advguard.v1 import guard_pb2_grpc
from serving.native.build import PACKAGES, missing
from tests.serving.test_workers import (
    CONNECTIONS, FRESH, classify_each_on_its_own_connection, classify_request, gone, scrape, scraped, served,
)


@pytest.fixture(scope="module")
def native_workers(serving_store, tools, tmp_path_factory):
    why = missing()
    if why:
        pytest.skip(f"no C++ toolchain for the native front end ({why}): apt-get install {PACKAGES}")
    tmp = tmp_path_factory.mktemp("native-workers")
    server = tools.start_server(serving_store, tmp / "server.log", "--front", "native", "--workers", "2",
                                "--poll-seconds", "0", env={"TMPDIR": str(tmp)})
    (folder,) = tmp.glob("advguard-metrics-*")
    yield server, folder
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def test_both_native_workers_answer_and_one_metrics_endpoint_counts_them(native_workers, clean_images):
    server, folder = native_workers
    assert server.ready["front"] == "native" and len(set(server.ready["workers"])) == 2
    replies = asyncio.run(classify_each_on_its_own_connection(server.target, classify_request(clean_images),
                                                              CONNECTIONS))
    assert len(replies) == CONNECTIONS and all(r.model_version == "1" for r in replies)
    per_worker = [served(folder, pid, "Classify") for pid in server.ready["workers"]]
    assert min(per_worker) > 0 and sum(per_worker) == CONNECTIONS, per_worker
    text = scrape(server.metrics_port)
    assert sum(scraped(text, "advguard_requests_total", method="Classify")) == CONNECTIONS
    assert sum(scraped(text, "advguard_request_latency_seconds_count", method="Classify")) == CONNECTIONS


def test_sigterm_drains_both_native_workers_under_load(native_workers, clean_images):
    server, folder = native_workers
    request = classify_request(clean_images)
    before = sum(served(folder, pid, "Classify") for pid in server.ready["workers"])

    async def main():
        stop = asyncio.Event()
        channels = [grpc.aio.insecure_channel(server.target, options=FRESH) for _ in range(8)]
        stubs = [guard_pb2_grpc.GuardedClassifierStub(channel) for channel in channels]

        async def call(i):
            if i == 200:
                server.proc.send_signal(signal.SIGTERM)  # with calls in flight on both workers
            try:
                await stubs[i % len(stubs)].Classify(request, timeout=60)
            except grpc.aio.AioRpcError:
                stop.set()  # refused (draining, or the port closed): the load winds down
                raise

        try:
            return await run_load(call, 1_000_000, 16, stop)
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))

    load = asyncio.run(main())
    pids = server.ready["workers"]
    code, counts = server.stop()
    assert code == 0, server.log_text()
    assert load.ok + load.codes["UNAVAILABLE"] == sum(load.codes.values()), (load.codes, load.details)
    assert counts["OK"] == before + load.ok  # every accepted call answered, over both workers
    assert server.log_text().count("finishing") == 2 and all(gone(pid) for pid in pids) and not folder.exists()


def test_a_lone_native_server_does_not_share_a_busy_port(serving_store, tmp_path):
    if missing():
        pytest.skip("no C++ toolchain for the native front end")
    from tests.serving.conftest import native_server

    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # would admit a reuse-port listener
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        with pytest.raises(RuntimeError, match="address in use"):
            native_server(serving_store, tmp_path / "native.log", "--port", str(port), "--poll-seconds", "0")
    finally:
        holder.close()
