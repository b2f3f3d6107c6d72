"""Every Prometheus metric advguard exports, created once at start-up, in one place."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
                   0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """advguard_* metrics on their own registry (so tests can run several servers)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "advguard_request_latency_seconds", "Request latency by model, method and verdict.",
            ["model", "method", "verdict"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.requests = Counter(
            "advguard_requests_total", "Requests by method and gRPC status code.",
            ["method", "code"], registry=self.registry)
        self.flagged = Counter(
            "advguard_attacks_flagged_total", "Inputs flagged, by detector.",
            ["model", "detector"], registry=self.registry)
        self.in_flight = Gauge(
            "advguard_requests_in_flight", "Requests being handled now.", registry=self.registry)
        self.queue_depth = Gauge(
            "advguard_queue_depth", "Images waiting for a batch.", ["model"], registry=self.registry)
        self.batch_size = Histogram(
            "advguard_batch_size", "Images per model run.", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=self.registry)
        self.model_info = Gauge(
            "advguard_model_info", "Loaded models (value 1).", ["model", "version", "file", "sha256"],
            registry=self.registry)

    def serve_http(self, port: int, host: str = "127.0.0.1"):
        """Start /metrics on `port`; returns (server, thread)."""
        return start_http_server(port, addr=host, registry=self.registry)
