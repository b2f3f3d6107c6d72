"""`advguard serve --front native`: the native front end as a server, with `advguard serve`'s
settings (`serving.grpc.settings`), lifecycle and metrics. C++ gRPC (`transport.cc`) serves the
unary methods of both APIs on one port; this thread takes their calls a batch at a time and
answers them on the same core (`serving.native.front`, `serving.native.methods`).

The model store is `advguard serve`'s `ModelManager` (load, verify, hot reload every
`poll_seconds`, the model series), run on an event loop of its own in a side thread; this thread
runs the models. Batches form as the dynamic batcher's do (`serving.runtime.batch_wait`): after a
batch of one, the next call runs at once; otherwise the thread waits, at most
`max_queue_delay_us` from the first call or a quarter of it after the latest arrival, for as
many calls as the largest of the last 16 batches. SIGTERM/SIGINT: ServerReady and health go
false, new calls get UNAVAILABLE for `drain_seconds` while every accepted one is answered, then
the port closes (in-flight replies get `grace_seconds`).

TLS and mutual TLS as `advguard serve` (`--tls-cert`, `--tls-key`, `--tls-client-ca`). As a worker
of `--workers N` (`serving.workers`): SO_REUSEPORT on the parent's port, metrics in the parent's
multiprocess folder (`advguard_requests_in_flight` written after every batch and idle wait, so it
lags by at most one batch wait). Not served (refused, naming `--front grpc`): `--http-port`.
This process never imports grpcio (two gRPC cores in one address space).

Example: `counts = serve_native(ServerSettings(store=Path("model_store")), on_ready=print)`
"""
from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import signal
import threading
import time
from concurrent.futures import Future
from typing import Callable

from serving.grpc.codes import DRAINING, UNAUTHENTICATED
from serving.grpc.settings import ServerSettings, check_exposure
from serving.metrics import MULTIPROC_DIR, Metrics, calls_by_code
from serving.native.build import load_extension
from serving.native.front import BatchAnswerer
from serving.native.methods import Handlers, ServerState, method_table
from serving.runtime.batch_wait import GAP_FRACTION, RECENT_BATCHES
from serving.runtime.dataplane import DataPlane
from serving.runtime.models import ModelManager

TAKE_TIMEOUT_MS = 100  # how often the waiting thread returns to Python (signals are handled there)
log = logging.getLogger(__name__)


def check_native(settings: ServerSettings) -> None:
    """ValueError for what the native front end does not serve (yet), naming --front grpc."""
    if settings.http_port is not None:
        raise ValueError("--http-port: not served by --front native yet; use --front grpc (the default)")
    check_exposure(settings)


class StoreThread:
    """`ModelManager` on an event loop in a thread of its own (load, hot reload, close)."""

    def __init__(self, settings: ServerSettings, metrics: Metrics, state: ServerState) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="advguard-store", daemon=True)
        self.thread.start()
        self.models = ModelManager(settings.store, settings.engine, settings.batching, metrics,
                                   settings.default_model, settings.bundle_checks)
        self.poller: Future | None = None
        try:
            self.call(self.models.load_all())
        except BaseException:
            self.stop_loop()
            raise
        if settings.poll_seconds > 0:
            async def follow(serving: bool) -> None:  # health NOT_SERVING while hot reload leaves no model
                state.serving = serving
            self.poller = asyncio.run_coroutine_threadsafe(self.models.poll(settings.poll_seconds, follow), self.loop)

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        if self.poller is not None:
            self.poller.cancel()
        self.call(self.models.close())
        self.stop_loop()

    def stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


def serve_native(settings: ServerSettings, on_ready: Callable[[dict], None] | None = None,
                 stats: dict | None = None) -> dict:
    """Load the store, serve until SIGTERM/SIGINT, finish accepted calls, return call counts
    (`stats`, when given, gets {"batches": model runs, "calls": the batched calls in them})."""
    check_native(settings)
    transport = load_extension()  # first: a missing toolchain is told before anything loads
    metrics = Metrics()
    state = ServerState()
    store = StoreThread(settings, metrics, state)
    plane = DataPlane(store.models, metrics, settings.limits, settings.disclosure, settings.allow_skip_guard,
                      settings.default_deadline_seconds)
    methods = method_table(Handlers(plane, state))
    answerer = BatchAnswerer(methods, metrics, settings.disclosure, settings.batching.max_batch_size,
                             settings.default_deadline_seconds)
    token = settings.auth_token.encode() if settings.auth_token else None
    queue = settings.batching.max_queue_size  # images for the batcher; calls here, each of one image or more
    tls = settings.tls
    pem = (tls.cert.read_bytes(), tls.key.read_bytes(), tls.client_ca.read_bytes() if tls.client_ca else None) \
        if tls is not None else None
    port = transport.start(f"{settings.host}:{settings.port}", settings.max_message_bytes,
                           [(m.path, m.flags, m.message) for m in methods], token, settings.max_concurrent_rpcs or 0,
                           queue, UNAUTHENTICATED[1], DRAINING[1],
                           f"queue full: {queue} calls waiting (limit {queue}); retry with backoff", pem,
                           settings.reuse_port)
    if MULTIPROC_DIR in os.environ:  # a worker of --workers: the parent's /metrics reads the gauge's file
        follow_in_flight = lambda: metrics.in_flight.set(transport.in_flight())  # noqa: E731
    else:
        metrics.in_flight.set_function(transport.in_flight)
        follow_in_flight = None
    metrics_port = (metrics.serve_http(settings.metrics_port, settings.metrics_host)
                    if settings.metrics_port is not None else None)
    gc.collect()
    gc.freeze()  # as `advguard serve`: what lives as long as the server is out of the collector's scans
    stopping: list[int] = []
    handlers = {sig: signal.signal(sig, lambda number, _: stopping.append(number)) for sig in (signal.SIGTERM, signal.SIGINT)}
    repo = store.models.repo
    log.info("serving %s on %s:%d (native front end, %s), metrics on %s", ", ".join(repo.names()), settings.host,
             port, "TLS" if tls else "plaintext", f"{settings.metrics_host}:{metrics_port}" if metrics_port else "off")
    if on_ready is not None:
        on_ready({"host": settings.host, "port": port, "metrics_port": metrics_port, "http_port": None,
                  "models": {name: repo.versions(name) for name in repo.names()}, "front": "native"})
    try:
        serve_calls(transport, answerer, settings, stopping, state, store, follow_in_flight)
    finally:
        transport.stop(settings.grace_seconds)
        answerer.refused(transport.refused())
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        store.close()
        plane.decoder.close()
    counts = calls_by_code(metrics.requests.collect())
    if stats is not None:
        stats.update(batches=answerer.batches, calls=answerer.calls)
    log.info("stopped; calls by status: %s (native: %d model runs for %d batched calls)", counts,
             answerer.batches, answerer.calls)
    return counts


def serve_calls(transport, answerer: BatchAnswerer, settings: ServerSettings, stopping: list[int],
                state: ServerState, store: StoreThread, follow_in_flight: Callable[[], None] | None = None) -> None:
    """Take and answer batches until a stop signal, then drain (see the module's docstring);
    `follow_in_flight`, when given, runs after every batch and every idle wait (TAKE_TIMEOUT_MS)."""
    batching = settings.batching
    recent = collections.deque([0], maxlen=RECENT_BATCHES)  # calls per batch, as BatchWait keeps images
    delay = batching.max_queue_delay_us
    drain_until = None
    while True:
        if stopping and drain_until is None:
            log.info("stopping: new calls get UNAVAILABLE; finishing %d accepted (drain %.1f s, grace %.0f s)",
                     transport.in_flight(), settings.drain_seconds, settings.grace_seconds)
            transport.drain()
            state.ready = False
            if store.poller is not None:
                store.poller.cancel()
            drain_until = time.monotonic() + settings.drain_seconds
        if drain_until is not None and time.monotonic() >= drain_until and not transport.waiting():
            return
        want = 1 if recent[-1] <= 1 else max(recent)
        calls = transport.take(batching.max_batch_size, want, delay, delay // GAP_FRACTION, TAKE_TIMEOUT_MS)
        answerer.refused(transport.refused())
        if calls:
            try:
                replies = answerer.answer(calls)
            except Exception:  # a bug: every call of the batch still gets a status, and the server goes on
                log.exception("answering a batch of %d calls failed", len(calls))
                replies = [answerer.failed(handle, method, arrival, None, "internal error")
                           for handle, method, _, arrival, _ in calls]
            transport.finish(replies)
            recent.append(len(calls))
        if follow_in_flight is not None:
            follow_in_flight()
