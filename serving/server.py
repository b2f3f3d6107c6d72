"""The gRPC server: `advguard.v1.GuardedClassifier`, grpc.health.v1 and reflection on one port,
Prometheus metrics on another. The servicer only translates wire formats and calls the core."""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from serving.metrics import Metrics
from serving.pipeline import Pipeline, PipelineResult, verdict_name
from serving.preprocess import InputError, Limits, decode_image, tensor_to_array
from serving.repository import ModelRepository, UnknownModelError

log = logging.getLogger(__name__)
SERVICE = "advguard.v1.GuardedClassifier"
_DTYPE_NAMES = {guard_pb2.DTYPE_UINT8: "uint8", guard_pb2.DTYPE_FLOAT32: "float32"}


@dataclass(frozen=True)
class ServerSettings:
    store: Path = Path("model_store")
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9100
    threads: int = 0
    max_message_bytes: int = 64 * 1024 * 1024
    grace_seconds: float = 10.0
    limits: Limits = field(default_factory=Limits)


def image_to_array(image: guard_pb2.Image, pipeline: Pipeline, limits: Limits) -> np.ndarray:
    source = image.WhichOneof("source")
    spec = pipeline.bundle.input
    if source == "encoded":
        return decode_image(image.encoded, spec, limits)
    if source == "tensor":
        t = image.tensor
        dtype = _DTYPE_NAMES.get(t.dtype)
        if dtype is None:
            raise InputError("tensor dtype is unspecified; set DTYPE_UINT8 or DTYPE_FLOAT32")
        return tensor_to_array(tuple(t.shape), dtype, t.data, spec)
    raise InputError("request has no image: set image.encoded (PNG/JPEG bytes) or image.tensor")


def to_response(pipeline: Pipeline, result: PipelineResult, i: int, request_id: str = "") -> guard_pb2.ClassifyResponse:
    index = int(result.classes[i])
    response = guard_pb2.ClassifyResponse(
        class_index=index, class_name=pipeline.labels[index],
        probabilities=result.probs[i].tolist(), model=pipeline.bundle.name,
        model_version=pipeline.bundle.version, answered_by=result.answered_by, request_id=request_id)
    if result.guard is not None:
        response.verdict = int(result.guard.verdicts[i])
        response.attack_score = float(result.guard.attack_scores[i])
        response.action = pipeline.policy.action
        for outcome in result.guard.outcomes:
            response.detectors.add(name=outcome.name, score=float(outcome.scores[i]),
                                   threshold=outcome.threshold, flagged=bool(outcome.flagged[i]),
                                   calibrated_fpr=outcome.target_fpr)
    return response


def model_info(repo: ModelRepository, pipeline: Pipeline) -> guard_pb2.ModelInfo:
    bundle = pipeline.bundle
    info = guard_pb2.ModelInfo(
        name=bundle.name, version=bundle.version, versions=repo.versions(bundle.name),
        dataset=bundle.dataset, labels=list(bundle.labels), input_shape=list(bundle.input.shape),
        created=bundle.created, ready=True, guard_policy=pipeline.policy.combine,
        guard_action=pipeline.policy.action)
    for f in bundle.models:
        info.files.add(file=f.file, sha256=f.sha256, role=f.role)
    for d in pipeline.detectors:
        info.detectors.add(name=d.detector.name, threshold=d.threshold, calibrated_fpr=d.target_fpr)
    return info


class GuardedClassifierServicer(guard_pb2_grpc.GuardedClassifierServicer):
    def __init__(self, repo: ModelRepository, metrics: Metrics, settings: ServerSettings) -> None:
        self.repo = repo
        self.metrics = metrics
        self.settings = settings

    async def _fail(self, context, method: str, model: str, code: grpc.StatusCode, message: str, began: float):
        self.metrics.requests.labels(method, code.name).inc()
        self.metrics.latency.labels(model or "unknown", method, "error").observe(time.perf_counter() - began)
        await context.abort(code, message)

    async def Classify(self, request, context):
        began = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            try:
                pipeline = self.repo.get(request.model, request.version)
                x = image_to_array(request.image, pipeline, self.settings.limits)[None]
            except UnknownModelError as err:
                return await self._fail(context, "Classify", request.model, grpc.StatusCode.NOT_FOUND, str(err), began)
            except InputError as err:
                return await self._fail(context, "Classify", request.model, grpc.StatusCode.INVALID_ARGUMENT, str(err), began)
            result = await asyncio.to_thread(pipeline.run, x, not request.skip_guard)
            response = to_response(pipeline, result, 0, request.request_id)
            verdict = "unguarded" if result.guard is None else verdict_name(result.guard.verdicts[0])
            self.metrics.requests.labels("Classify", "OK").inc()
            self.metrics.latency.labels(pipeline.bundle.name, "Classify", verdict).observe(time.perf_counter() - began)
            return response
        finally:
            self.metrics.in_flight.dec()

    async def ListModels(self, request, context):
        began = time.perf_counter()
        response = guard_pb2.ListModelsResponse(
            models=[model_info(self.repo, self.repo.get(name)) for name in self.repo.names()])
        self.metrics.requests.labels("ListModels", "OK").inc()
        self.metrics.latency.labels("all", "ListModels", "none").observe(time.perf_counter() - began)
        return response

    async def GetModel(self, request, context):
        began = time.perf_counter()
        try:
            pipeline = self.repo.get(request.name, request.version)
        except UnknownModelError as err:
            return await self._fail(context, "GetModel", request.name, grpc.StatusCode.NOT_FOUND, str(err), began)
        self.metrics.requests.labels("GetModel", "OK").inc()
        self.metrics.latency.labels(pipeline.bundle.name, "GetModel", "none").observe(time.perf_counter() - began)
        return model_info(self.repo, pipeline)


async def serve(settings: ServerSettings, ready: asyncio.Event | None = None) -> None:
    """Load the store, serve until SIGTERM/SIGINT, then stop with a grace period."""
    options = [("grpc.max_receive_message_length", settings.max_message_bytes),
               ("grpc.max_send_message_length", settings.max_message_bytes)]
    server = grpc.aio.server(options=options)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    metrics = Metrics()
    repo = ModelRepository(settings.store, settings.threads)
    repo.load_all()
    for name in repo.names():
        for version in repo.versions(name):
            bundle = repo.get(name, version).bundle
            for f in bundle.models:
                metrics.model_info.labels(name, version, f.file, f.sha256).set(1)
    guard_pb2_grpc.add_GuardedClassifierServicer_to_server(
        GuardedClassifierServicer(repo, metrics, settings), server)
    reflection.enable_server_reflection(
        (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if settings.metrics_port:
        metrics.serve_http(settings.metrics_port, settings.host)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on %s:%d (metrics on :%d)", ", ".join(repo.names()), settings.host, bound,
             settings.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("stopping: finishing accepted requests (grace %.0f s)", settings.grace_seconds)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(settings.grace_seconds)
