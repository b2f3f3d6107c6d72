"""The gRPC server: `advguard.v1.GuardedClassifier`, `inference.GRPCInferenceService` (Open
Inference Protocol v2), grpc.health.v1 and reflection on one port; Prometheus metrics on another.

Shape: `async def serve(settings)` on `grpc.aio.server()`; health is SERVING only once every
bundle is loaded; SIGTERM/SIGINT: health goes NOT_SERVING, no new calls are accepted, every
accepted call is finished (within `grace_seconds`; new calls meanwhile get UNAVAILABLE for
`drain_seconds`, then the port closes), then the process exits.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.advguard.v1 import guard_pb2_grpc
from protos.inference import grpc_service_pb2_grpc
from serving.bundle import BundleChecks
from serving.runtime.batcher import BatchingOptions
from serving.runtime.dataplane import DataPlane
from serving.engine import EngineOptions
from serving.grpc.interceptors import ServerInterceptor
from serving.client import is_loopback
from serving.metrics import Metrics, calls_by_code
from serving.grpc.inference import InferenceServicer
from serving.preprocess import Limits
from serving.runtime.models import ModelManager
from serving.grpc.classifier import GuardedClassifierServicer

log = logging.getLogger(__name__)
SERVICE = "advguard.v1.GuardedClassifier"
OIP_SERVICE = "inference.GRPCInferenceService"
HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the server's certificate chain and key; `client_ca` turns on mutual TLS."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials([(self.key.read_bytes(), self.cert.read_bytes())],
                                           root_certificates=ca, require_client_auth=ca is not None)


@dataclass(frozen=True)
class ServerSettings:
    """Everything `advguard serve` can set. port/metrics_port 0: any free port (reported to
    `on_ready`); metrics_port None: no metrics endpoint; poll_seconds 0: no hot reload;
    auth_token: require `authorization: Bearer <token>` on every call but health checks (refused
    over plaintext off loopback unless allow_plaintext_token); metrics_host: where /metrics
    listens (loopback by default, whatever `host` is); disclosure: what answers show of the
    guard (`serving.answer`: verdict | full); allow_skip_guard: honour requests' skip_guard;
    default_deadline_seconds: the deadline of calls that set none (None: none);
    drain_seconds: after SIGTERM, how long new calls are answered UNAVAILABLE (health
    NOT_SERVING) before the port closes, so calls already on their way are not cut off;
    reuse_port: share port and http_port with other processes that set it (SO_REUSEPORT: the
    workers of `serving.workers`); off, a port already in use is an error."""

    store: Path = Path("model_store")
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = 9100
    http_port: int | None = None  # OIP v2 over HTTP/JSON (serving.rest) on `host`; None: off, 0: any free port
    metrics_host: str = "127.0.0.1"
    disclosure: str = "verdict"
    allow_skip_guard: bool = False
    allow_plaintext_token: bool = False
    default_deadline_seconds: float | None = 60.0
    engine: EngineOptions = field(default_factory=EngineOptions)
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    limits: Limits = field(default_factory=Limits)
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_rpcs: int | None = 1024
    grace_seconds: float = 30.0
    drain_seconds: float = 1.0
    poll_seconds: float = 5.0
    default_model: str = ""
    auth_token: str | None = None
    tls: TLSFiles | None = None
    bundle_checks: BundleChecks = field(default_factory=BundleChecks)  # file size cap, --trust-key
    reuse_port: bool = False


def check_exposure(settings: ServerSettings) -> None:
    """Refuse settings that would send a bearer token in clear text over a network."""
    if settings.auth_token and settings.tls is None and not is_loopback(settings.host) and not settings.allow_plaintext_token:
        raise ValueError(f"a bearer token over plaintext gRPC on {settings.host} would travel in clear text: "
                         "add --tls-cert/--tls-key, serve on loopback behind a TLS proxy, or pass "
                         "--allow-plaintext-token if the network is trusted")


async def serve(settings: ServerSettings, on_ready: Callable[[dict], None] | None = None) -> dict:
    """Load the store, serve until SIGTERM/SIGINT, finish accepted calls, return call counts."""
    check_exposure(settings)
    metrics = Metrics()
    models = ModelManager(settings.store, settings.engine, settings.batching, metrics, settings.default_model,
                          settings.bundle_checks)  # each served version runs on threads of its own
    options = [("grpc.max_receive_message_length", settings.max_message_bytes),
               ("grpc.max_send_message_length", settings.max_message_bytes),
               ("grpc.so_reuseport", int(settings.reuse_port))]
    interceptor = ServerInterceptor(metrics, settings.auth_token, HEALTH_METHODS)
    server = grpc.aio.server(options=options, interceptors=[interceptor],
                             maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE, OIP_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    await models.load_all()
    plane = DataPlane(models, metrics, settings.limits, settings.disclosure, settings.allow_skip_guard,
                      settings.default_deadline_seconds)
    oip = InferenceServicer(plane)
    guard_pb2_grpc.add_GuardedClassifierServicer_to_server(GuardedClassifierServicer(plane), server)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(oip, server)
    reflection.enable_server_reflection((SERVICE, OIP_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{settings.host}:{settings.port}"
    port = (server.add_secure_port(address, settings.tls.credentials()) if settings.tls
            else server.add_insecure_port(address))
    metrics_port = (metrics.serve_http(settings.metrics_port, settings.metrics_host)
                    if settings.metrics_port is not None else None)
    await server.start()
    rest = None
    if settings.http_port is not None:  # the REST front end (serving.rest), same data plane and loop
        from serving.rest.server import RestServer
        rest = await RestServer.start(plane, metrics, settings)
    # Everything loaded so far lives as long as the server: move it out of the garbage
    # collector's reach, so a full collection under load scans only what came since (measured:
    # 0.4-2 ms instead of 11-13 ms stalls, each of which holds up every call in flight).
    gc.collect()
    gc.freeze()
    for service in ("", SERVICE, OIP_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on %s:%d (%s), metrics on %s", ", ".join(models.repo.names()), settings.host, port,
             "TLS" if settings.tls else "plaintext", f"{settings.metrics_host}:{metrics_port}" if metrics_port else "off")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def health_follows(serving: bool) -> None:  # NOT_SERVING while hot reload leaves no model
        for service in ("", SERVICE, OIP_SERVICE):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING if serving
                                      else health_pb2.HealthCheckResponse.NOT_SERVING)

    poller = (loop.create_task(models.poll(settings.poll_seconds, on_change=health_follows))
              if settings.poll_seconds > 0 else None)
    if on_ready is not None:
        on_ready({"host": settings.host, "port": port, "metrics_port": metrics_port,
                  "http_port": rest.port if rest is not None else None,
                  "models": {name: models.repo.versions(name) for name in models.repo.names()}})
    await stop.wait()

    in_flight = int(metrics.registry.get_sample_value("advguard_requests_in_flight") or 0)
    log.info("stopping: new calls get UNAVAILABLE; finishing %d accepted (drain %.1f s, grace %.0f s)",
             in_flight, settings.drain_seconds, settings.grace_seconds)
    # Calls that reached gRPC's core but not yet this process would be cancelled by server.stop():
    # answer them UNAVAILABLE (retryable) for a moment first, then close the port.
    interceptor.draining = True
    oip.ready = False
    if rest is not None:
        rest.draining = True
    await health_servicer.enter_graceful_shutdown()
    if poller is not None:
        poller.cancel()
    await asyncio.sleep(settings.drain_seconds)
    await server.stop(settings.grace_seconds)
    if rest is not None:
        await rest.stop(settings.grace_seconds)
    await models.close()
    plane.decoder.close()
    counts = calls_by_code(metrics.requests.collect())
    log.info("stopped; calls by status: %s", counts)
    return counts
