"""`advguard serve --workers N` (N > 1): N server processes on one port, one /metrics.

The parent (`serve_workers`) serves no calls. It claims the gRPC (and REST) port, makes a
private folder for the workers' metric files (`serving.metrics.WorkerMetrics`), serves the one
/metrics over them, and starts N workers (multiprocessing, spawn: fresh interpreters, nothing
inherited but the settings). Each worker is one server, `serving.grpc.server.serve` (or, with
`front="native"`, the native front end `serving.native.server.serve_native`, which has no REST
port), with `reuse_port` (SO_REUSEPORT: the kernel spreads new connections over the workers; a
gRPC connection stays on the worker that accepted it) and no metrics endpoint of its own; each
loads the store and runs its own hot reload scan.

Signals: SIGTERM/SIGINT to the parent sends SIGTERM to every worker, which drains as a lone
server does (health NOT_SERVING, UNAVAILABLE for --drain-seconds, accepted calls finished);
the parent exits 0 once all exited 0. A worker that dies unasked is logged with its exit code,
the others are drained the same way and the parent exits 1: the process manager above
(Kubernetes, systemd, compose) restarts the whole server, and a crash shows in its restart
count instead of hiding in a restart loop in here. Workers get SIGTERM too if the parent dies.

Example:
    code, counts = serve_workers(settings, 4, on_ready=print)   # blocks until SIGTERM
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Callable

from serving.grpc.settings import ServerSettings, check_exposure
from serving.metrics import WorkerMetrics

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [worker {index}]: %(message)s"


def cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def claim_port(host: str, port: int, what: str) -> socket.socket:
    """Check that nothing listens on host:port (0: pick a free port) and hold it for the workers:
    a bound, not listening, SO_REUSEPORT socket, which receives no connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))  # without SO_REUSEPORT: fails if another server has the port
        port = sock.getsockname()[1]
        sock.close()
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot serve {what} on {host}:{port}: {err.strerror}") from None
    return sock


def _run_worker(settings: ServerSettings, ready: Connection, index: int, parent: int, level: int,
                front: str = "grpc") -> None:
    """A worker's main: one server of the front end `front` ('grpc' or 'native'); its ready info
    goes to the parent through `ready`. Imported here: a native worker never imports grpcio."""
    logging.basicConfig(level=level, format=LOG_FORMAT.format(index=index))
    try:  # SIGTERM (drain) when the parent dies, even by SIGKILL: no orphan keeps the port
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.debug("prctl unavailable: this worker outlives a killed parent")
    if os.getppid() != parent:
        return
    if front == "native":
        from serving.native.server import serve_native

        serve_native(settings, on_ready=ready.send)
    else:
        from serving.grpc.server import serve

        asyncio.run(serve(settings, on_ready=ready.send))


class _Workers:
    """The running workers: start, forward a stop, follow their exits."""

    def __init__(self, settings: ServerSettings, count: int, metrics: WorkerMetrics, front: str = "grpc") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.metrics, self.stopping, self.failed = metrics, False, False
        self.procs, self.pipes = [], {}
        level = logging.getLogger().getEffectiveLevel()
        saved = {key: os.environ.get(key) for key in metrics.env}
        os.environ.update(metrics.env)  # a spawned worker's environment is ours at start()
        try:
            for index in range(count):
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_run_worker, name=f"worker {index}",
                                   args=(settings, send, index, os.getpid(), level, front))
                proc.start()
                send.close()
                self.procs.append(proc)
                self.pipes[receive] = proc
        finally:
            for key, value in saved.items():
                if value is None:
                    del os.environ[key]
                else:
                    os.environ[key] = value

    def stop(self) -> None:
        """SIGTERM to every worker still running (once)."""
        if not self.stopping:
            self.stopping = True
            for proc in self.procs:
                if proc.exitcode is None:
                    os.kill(proc.pid, signal.SIGTERM)

    def exited(self, proc) -> None:
        proc.join()
        self.metrics.worker_exited(proc.pid)
        stopped_by_us = self.stopping and proc.exitcode in (0, -signal.SIGTERM)  # -SIGTERM: still loading
        if not stopped_by_us:
            log.error("%s (pid %d) %s; stopping the others", proc.name, proc.pid,
                      f"exited with code {proc.exitcode}" if proc.exitcode >= 0
                      else f"died of signal {signal.Signals(-proc.exitcode).name}")
            self.failed = True
            self.stop()

    def run(self, wakeup: socket.socket, stop_requested: Callable[[], bool],
            on_ready: Callable[[list[dict]], None]) -> None:
        """Until every worker has exited: collect ready infos (then `on_ready`), forward stops."""
        live = {proc.sentinel: proc for proc in self.procs}
        infos: list[dict] = []
        while live:
            for obj in wait([*live, *self.pipes, wakeup]):
                if obj is wakeup:
                    wakeup.recv(64)
                elif obj in self.pipes:
                    try:
                        infos.append(obj.recv())
                    except EOFError:  # the worker is gone; its sentinel says how
                        del self.pipes[obj]
                        continue
                    if len(infos) == len(self.procs) and not self.stopping:
                        on_ready(infos)
                else:
                    self.exited(live.pop(obj))
            if stop_requested():
                self.stop()


def serve_workers(settings: ServerSettings, count: int, on_ready: Callable[[dict], None] | None = None,
                  front: str = "grpc") -> tuple[int, dict[str, int]]:
    """Serve with `count` worker processes of the front end `front` ('grpc' or 'native') until
    SIGTERM/SIGINT; (exit code, calls by status summed over the workers). on_ready gets the lone
    server's ready info with the parent's metrics port and the workers' pids (`workers`)."""
    check_exposure(settings)
    if count > cores():
        log.warning("%d workers on %d cores: they will compete for CPU", count, cores())
    metrics = WorkerMetrics()
    claimed: list[socket.socket] = []
    wakeup, wake_signal = socket.socketpair()  # a signal's number is written to it: wakes `wait`
    wake_signal.setblocking(False)
    signals: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: signals.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    previous_wakeup = signal.set_wakeup_fd(wake_signal.fileno(), warn_on_full_buffer=False)
    try:
        claimed.append(claim_port(settings.host, settings.port, "gRPC"))
        port, http_port = claimed[0].getsockname()[1], None
        if settings.http_port is not None:
            claimed.append(claim_port(settings.host, settings.http_port, "REST"))
            http_port = claimed[1].getsockname()[1]
        metrics_port = (metrics.serve_http(settings.metrics_port, settings.metrics_host)
                        if settings.metrics_port is not None else None)
        workers = _Workers(replace(settings, port=port, http_port=http_port, metrics_port=None, reuse_port=True),
                           count, metrics, front)

        def ready(infos: list[dict]) -> None:
            log.info("%d workers serving on %s:%d, metrics of all on %s", count, settings.host, port,
                     f"{settings.metrics_host}:{metrics_port}" if metrics_port else "off")
            if on_ready is not None:
                on_ready({**infos[0], "metrics_port": metrics_port, "workers": [p.pid for p in workers.procs]})

        workers.run(wakeup, lambda: bool(signals), ready)
        counts = metrics.calls_by_code()
        log.info("stopped; calls by status, all workers: %s", counts)
        return (1 if workers.failed else 0), counts
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for sock in (*claimed, wakeup, wake_signal):
            sock.close()
        metrics.close()
