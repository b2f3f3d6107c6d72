"""Every Prometheus metric advguard exports, created once at start-up, in one place.

Labels are of low cardinality: model (bundle name), method (the RPC's method name, e.g.
`Classify`, `ModelInfer`, `Check`), verdict (`clean`, `suspicious`, `adversarial`, `unguarded`
when the guard was skipped, `none` for methods without one, `error`), code (a gRPC status
name), detector. Never a request id.
"""
from __future__ import annotations

import contextvars

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
        self.in_flight = Gauge(
            "advguard_requests_in_flight", "Calls being handled now.", registry=self.registry)
        self.queue_depth = Gauge(
            "advguard_queue_depth", "Images waiting for a batch, by model.", ["model"], registry=self.registry)
        self.batch_size = Histogram(
            "advguard_batch_size", "Images per model run, by model.", ["model"],
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.model_info = Gauge(
            "advguard_model_info", "Loaded model files (value 1), by bundle, version, file and SHA-256.",
            ["model", "version", "file", "sha256"], registry=self.registry)
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
