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
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.advguard.v1 import guard_pb2_grpc
from protos.inference import grpc_service_pb2_grpc
from serving.runtime.dataplane import DataPlane
from serving.grpc.interceptors import ServerInterceptor
from serving.grpc.settings import ServerSettings, check_exposure  # grpc-free, shared with serving.native
from serving.metrics import Metrics, calls_by_code
from serving.grpc.inference import InferenceServicer
from serving.runtime.models import ModelManager
from serving.grpc.classifier import GuardedClassifierServicer

log = logging.getLogger(__name__)
SERVICE = "advguard.v1.GuardedClassifier"
OIP_SERVICE = "inference.GRPCInferenceService"
HEALTH_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


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
