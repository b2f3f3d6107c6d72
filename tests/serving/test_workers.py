"""`advguard serve --workers N` (serving.workers), real processes on loopback: both workers answer
(each worker's own metric file is the witness), the one /metrics adds every call up and passes
promtool, SIGTERM drains both, a worker that dies stops the server with an error, the default
is one process, --workers 0 is refused."""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from advguard.cli.serve import add_serve_args
from serving.metrics import WorkerMetrics, remove_stale_metric_dirs
from protos.advguard.v1 import guard_pb2, guard_pb2_grpc

PROMTOOL = shutil.which("promtool")
CONNECTIONS = 32  # the kernel hashes each new connection to a worker: all 32 on one of 2 has p = 2**-31
FRESH = [("grpc.use_local_subchannel_pool", 1)]  # a channel of its own, not a shared connection


def classify_request(clean_images) -> guard_pb2.ClassifyRequest:
    return guard_pb2.ClassifyRequest(model="fmnist-guarded", image=guard_pb2.Image(tensor=guard_pb2.Tensor(
        shape=[1, 28, 28], dtype=guard_pb2.DTYPE_UINT8, data=clean_images[0][0].tobytes())))


def start_workers(tools, store: Path, tmp: Path, *args: str):
    """A 2-worker server whose private metrics folder lands under `tmp` (its TMPDIR)."""
    tmp.mkdir(exist_ok=True)
    server = tools.start_server(store, tmp / "server.log", "--workers", "2", "--poll-seconds", "0", *args,
                                env={"TMPDIR": str(tmp)})
    (folder,) = tmp.glob("advguard-metrics-*")
    return server, folder


def worker_samples(folder: Path, pid: int, kind: str, name: str) -> dict[tuple, float]:
    """One worker's own samples of `name` (labels -> value) from its metric file `<kind>_<pid>.db`."""
    path = folder / f"{kind}_{pid}.db"
    if not path.exists():
        return {}
    return {tuple(sorted(s.labels.items())): s.value for family in MultiProcessCollector.merge([str(path)])
            for s in family.samples if s.name == name}


def served(folder: Path, pid: int, method_prefix: str) -> float:
    """Calls worker `pid` finished whose method starts with `method_prefix`."""
    return sum(value for labels, value in worker_samples(folder, pid, "counter", "advguard_requests_total").items()
               if dict(labels)["method"].startswith(method_prefix))


def in_flight(folder: Path, pid: int) -> float:
    return sum(worker_samples(folder, pid, "gauge_livesum", "advguard_requests_in_flight").values())


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def scraped(text: str, name: str, **labels: str) -> list[float]:
    return [s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


async def classify_each_on_its_own_connection(target: str, request, count: int, on_done=None) -> list:
    channels = [grpc.aio.insecure_channel(target, options=FRESH) for _ in range(count)]
    try:
        async def one(channel):
            reply = await guard_pb2_grpc.GuardedClassifierStub(channel).Classify(request, timeout=60)
            if on_done is not None:
                on_done()
            return reply
        return await asyncio.gather(*(one(channel) for channel in channels))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_until(condition, what: str, seconds: float = 60) -> None:
    """Poll `condition` (a check of the processes' state, not a timed wait) until true."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def two_workers(serving_store, tools, clean_images, tmp_path_factory):
    """A 2-worker server (gRPC and REST) after CONNECTIONS Classify calls and CONNECTIONS REST
    health checks, each on a connection of its own."""
    server, folder = start_workers(tools, serving_store, tmp_path_factory.mktemp("workers"), "--http-port", "0")
    replies = asyncio.run(classify_each_on_its_own_connection(server.target, classify_request(clean_images),
                                                              CONNECTIONS))
    for _ in range(CONNECTIONS):  # urllib opens a new connection per request
        with urllib.request.urlopen(f"http://127.0.0.1:{server.ready['http_port']}/v2/health/ready", timeout=10) as r:
            assert r.status == 200
    yield SimpleNamespace(server=server, folder=folder, pids=server.ready["workers"], replies=replies)
    code, counts = server.stop()
    assert code == 0, server.log_text()
    assert counts.get("OK") == CONNECTIONS and not folder.exists()  # the parent removes its folder


def test_two_workers_both_answer_grpc_calls(two_workers):
    per_worker = [served(two_workers.folder, pid, "Classify") for pid in two_workers.pids]
    assert len(two_workers.replies) == CONNECTIONS and all(r.model_version == "1" for r in two_workers.replies)
    assert len(set(two_workers.pids)) == 2 and min(per_worker) > 0, per_worker
    assert sum(per_worker) == CONNECTIONS


def test_two_workers_share_the_rest_port(two_workers):
    per_worker = [served(two_workers.folder, pid, "rest_") for pid in two_workers.pids]
    assert min(per_worker) > 0, per_worker


def test_the_one_metrics_endpoint_counts_every_call_once(two_workers):
    text = scrape(two_workers.server.metrics_port)
    assert sum(scraped(text, "advguard_requests_total", method="Classify")) == CONNECTIONS
    assert sum(scraped(text, "advguard_request_latency_seconds_count", method="Classify")) == CONNECTIONS
    assert scraped(text, "advguard_requests_in_flight") == [0]
    # one series per loaded file (the max over workers), not one per worker
    info = scraped(text, "advguard_model_info")
    assert info and set(info) == {1}
    assert len(info) == len(worker_samples(two_workers.folder, two_workers.pids[0], "gauge_livemax",
                                           "advguard_model_info"))


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: sudo apt-get install prometheus")
def test_promtool_accepts_the_aggregated_metrics(two_workers):
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape(two_workers.server.metrics_port),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_sigterm_drains_every_worker(guarded_bundle, tools, clean_images, tmp_path):
    store = tmp_path / "store"
    tools.clone_bundle(guarded_bundle, store, "fmnist-guarded", "1")
    # a call waits for a full batch of 64 until no call came for a quarter of 30 s: slow calls
    server, folder = start_workers(tools, store, tmp_path / "tmp", "--max-queue-delay-us", "30000000",
                                   "--delay-lone-requests")
    pids = server.ready["workers"]
    finished: list[float] = []
    sent = {}

    async def main():
        calls = asyncio.ensure_future(classify_each_on_its_own_connection(
            server.target, classify_request(clean_images), CONNECTIONS, lambda: finished.append(time.monotonic())))
        deadline = time.monotonic() + 60
        while not (all(in_flight(folder, pid) > 0 for pid in pids)
                   and sum(in_flight(folder, pid) for pid in pids) == CONNECTIONS):
            assert time.monotonic() < deadline and not calls.done(), [in_flight(folder, pid) for pid in pids]
            await asyncio.sleep(0.05)  # polling the workers' files for a condition, not a timed wait
        sent["at"] = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # every call in flight, on both workers
        return await calls

    replies = asyncio.run(main())
    code, counts = server.stop()
    assert code == 0, server.log_text()
    assert len(replies) == CONNECTIONS and min(finished) > sent["at"]  # all answered OK, after SIGTERM
    assert counts == {"OK": CONNECTIONS}
    assert server.log_text().count("finishing") == 2 and all(gone(pid) for pid in pids) and not folder.exists()


def test_a_worker_that_dies_stops_the_server_with_an_error(guarded_bundle, tools, tmp_path):
    store = tmp_path / "store"
    tools.clone_bundle(guarded_bundle, store, "fmnist-guarded", "1")
    server, folder = start_workers(tools, store, tmp_path / "tmp")
    dead, survivor = server.ready["workers"]
    os.kill(dead, signal.SIGKILL)
    server.proc.communicate(timeout=60)  # the parent exits by itself
    log = server.log_text()
    assert server.proc.returncode == 1, log
    assert f"(pid {dead}) died of signal SIGKILL" in log and "finishing" in log  # the survivor drained
    assert gone(survivor) and not folder.exists()


def test_workers_drain_when_the_parent_is_killed(guarded_bundle, tools, tmp_path):
    store = tmp_path / "store"
    tools.clone_bundle(guarded_bundle, store, "fmnist-guarded", "1")
    server, folder = start_workers(tools, store, tmp_path / "tmp")
    server.proc.kill()  # SIGKILL: no chance to stop them; the kernel sends them SIGTERM (PR_SET_PDEATHSIG)
    server.proc.communicate(timeout=60)
    wait_until(lambda: all(gone(pid) for pid in server.ready["workers"]), "orphaned workers exit")
    assert server.log_text().count("finishing") == 2
    # the killed parent's metrics folder is left behind; the next server's parent removes it
    assert folder.exists()
    assert remove_stale_metric_dirs(WorkerMetrics.PREFIX, root=str(tmp_path / "tmp")) == [str(folder)]


def test_only_the_metrics_folders_of_dead_parents_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{WorkerMetrics.PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{WorkerMetrics.PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{WorkerMetrics.PREFIX}notapid-ghi"
    for path in (stale, live, other):
        path.mkdir()
    assert remove_stale_metric_dirs(WorkerMetrics.PREFIX, root=str(tmp_path)) == [str(stale)]
    assert live.exists() and other.exists() and not stale.exists()


def test_hot_reload_reaches_every_worker(guarded_bundle, tools, tmp_path):
    store = tmp_path / "store"
    tools.clone_bundle(guarded_bundle, store, "fmnist-guarded", "1")
    server, folder = start_workers(tools, store, tmp_path / "tmp", "--poll-seconds", "0.2")
    tools.clone_bundle(guarded_bundle, store, "fmnist-guarded", "2")
    shutil.rmtree(store / "fmnist-guarded" / "1")

    def versions() -> set[str]:
        return {s.labels["version"] for family in text_string_to_metric_families(scrape(server.metrics_port))
                for s in family.samples if s.name == "advguard_model_info"}

    def loaded(pid: int) -> dict[str, float]:  # version -> its files' largest value in the worker's own file
        values: dict[str, float] = {}
        for labels, value in worker_samples(folder, pid, "gauge_livemax", "advguard_model_info").items():
            version = dict(labels)["version"]
            values[version] = max(value, values.get(version, 0))
        return values

    try:  # each worker unloads v1 (its file keeps it, at 0: files cannot drop a series) and loads v2
        wait_until(lambda: all(loaded(pid) == {"1": 0, "2": 1} for pid in server.ready["workers"]),
                   "every worker serves version 2 only")
        assert versions() == {"2"}  # the page leaves out what no worker has loaded
    finally:
        code, _ = server.stop()
    assert code == 0, server.log_text()


def test_one_process_by_default(server):
    assert "workers" not in server.ready
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
    if children.exists():
        assert children.read_text().split() == []


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_workers_must_be_a_positive_count(value, capsys):
    parser = argparse.ArgumentParser(prog="advguard serve")
    add_serve_args(parser)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--workers", value])
    assert exit_.value.code == 2
    assert "--workers" in capsys.readouterr().err
    assert parser.parse_args([]).workers == 1
