"""Every Prometheus metric advguard exports, created once at start-up, in one place.

Labels are of low cardinality: model (bundle name), method (the RPC's method name, e.g.
`Classify`, `ModelInfer`, `Check`), verdict (`clean`, `suspicious`, `adversarial`, `unguarded`
when the guard was skipped, `none` for methods without one, `error`), code (a gRPC status
name), detector. Never a request id.

With `advguard serve --workers N` every worker process writes its metrics to files in a folder
the parent names in PROMETHEUS_MULTIPROC_DIR before the worker starts (prometheus_client's
multiprocess mode) and only the parent serves /metrics (`WorkerMetrics`): counters and
histograms add up over workers; each gauge says how in `multiprocess_mode` (ignored with one
process).
"""
from __future__ import annotations

import contextvars
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """advguard_* metrics on their own registry (so one process can hold several servers)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "advguard_request_latency_seconds",
            "Time from a call's arrival to its answer (a stream: to its end), by model, method and verdict.",
            ["model", "method", "verdict"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stream_item_latency = Histogram(
            "advguard_stream_item_latency_seconds",
            "ClassifyStream: time from an item's arrival to its answer, by model and verdict.",
            ["model", "verdict"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.requests = Counter(
            "advguard_requests_total", "Calls by method and gRPC status code.",
            ["method", "code"], registry=self.registry)
        self.verdicts = Counter(
            "advguard_verdicts_total", "Classified images by model and verdict.",
            ["model", "verdict"], registry=self.registry)
        self.flagged = Counter(
            "advguard_attacks_flagged_total", "Images a detector flagged, by model and detector.",
            ["model", "detector"], registry=self.registry)
        self.in_flight = Gauge(  # workers: the sum over the running ones
            "advguard_requests_in_flight", "Calls being handled now.", registry=self.registry,
            multiprocess_mode="livesum")
        self.queue_depth = Gauge(
            "advguard_queue_depth", "Images waiting for a batch, by model.", ["model"], registry=self.registry,
            multiprocess_mode="livesum")
        self.batch_size = Histogram(
            "advguard_batch_size", "Images per model run, by model.", ["model"],
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.model_info = _InfoGauge(  # workers: 1 while any running worker has the file loaded
            "advguard_model_info", "Loaded model files (value 1), by bundle, version, file and SHA-256.",
            ["model", "version", "file", "sha256"], registry=self.registry, multiprocess_mode="livemax")
        self.model_loads = Counter(
            "advguard_model_loads_total", "Bundle versions loaded or refused, by model and outcome.",
            ["model", "outcome"], registry=self.registry)
        self.store_scan_failures = Counter(
            "advguard_store_scan_failures_total",
            "Hot reload scans that could not list the model store (loaded models were kept).",
            registry=self.registry)

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Start /metrics on `port` (0: any free port); returns the port bound."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port


class _InfoGauge(Gauge):
    """A Gauge whose `remove` also holds across worker processes: the multiprocess mode cannot
    delete a series from a worker's file (it warns and keeps it), so the series is set to 0
    there first, and `WorkerMetrics` leaves info series at 0 out."""

    def remove(self, *labelvalues) -> None:
        if MULTIPROC_DIR in os.environ:
            self.labels(*labelvalues).set(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Removal of labels has not been implemented"
            super().remove(*labelvalues)


def calls_by_code(families: Iterable[Metric]) -> dict[str, int]:
    """Calls finished, by status code (all methods), from the `advguard_requests` family."""
    counts: dict[str, int] = {}
    for family in families:
        if family.name != "advguard_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                code = sample.labels["code"]
                counts[code] = counts.get(code, 0) + int(sample.value)
    return counts


def remove_stale_metric_dirs(prefix: str, root: str | None = None) -> list[str]:
    """Remove the metric folders (`PREFIX<pid>-*` under the temp dir) of parents that are gone
    (a SIGKILLed parent cannot clean up after itself); returns what was removed."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(f"{prefix}*-*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and path.is_dir() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class WorkerMetrics:
    """The parent's side of `--workers N`: a private folder for the workers' metric files (give
    the workers `env` before they start; removed by `close`), one /metrics over all of them.

    Example:
        metrics = WorkerMetrics(); port = metrics.serve_http(9100, "127.0.0.1")
        ... start workers with os.environ | metrics.env; metrics.worker_exited(pid) ...
        metrics.calls_by_code(); metrics.close()
    """

    PREFIX = "advguard-metrics-"

    def __init__(self) -> None:
        remove_stale_metric_dirs(self.PREFIX)
        self.path = tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-")
        self.env = {MULTIPROC_DIR: self.path}
        self._files = MultiProcessCollector(None, path=self.path)
        self._http = None

    def collect(self) -> Iterable[Metric]:
        for family in self._files.collect():
            if family.name == "advguard_model_info":  # versions every worker unloaded
                family.samples = [s for s in family.samples if s.value]
            yield family

    def calls_by_code(self) -> dict[str, int]:
        return calls_by_code(self.collect())

    def serve_http(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the one /metrics on `port` (0: any free port); returns the port bound."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        self._http, _thread = start_http_server(port, addr=host, registry=registry)
        return self._http.server_port

    def worker_exited(self, pid: int) -> None:
        """Drop the live gauges (in flight, queue depth, model info) of a worker that is gone;
        its counters and histograms stay in the sums."""
        mark_process_dead(pid, self.path)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        shutil.rmtree(self.path, ignore_errors=True)


class CallLabels:
    """The labels only a call's handler knows (the model that answered, the verdict, the status
    it ended with), read by the front end's per-call metrics when the call ends."""

    __slots__ = ("model", "verdict", "code")

    def __init__(self) -> None:
        self.model, self.verdict, self.code = "", "none", ""


_current: contextvars.ContextVar[CallLabels] = contextvars.ContextVar("advguard_call_labels")


def set_call_labels() -> CallLabels:
    """Fresh labels for the call running in this task (each call runs in its own context copy)."""
    labels = CallLabels()
    _current.set(labels)
    return labels


def call_labels() -> CallLabels:
    """The labels of the call being handled (a throwaway outside one)."""
    labels = _current.get(None)
    return labels if labels is not None else CallLabels()
