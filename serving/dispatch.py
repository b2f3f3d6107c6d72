"""What both servicers (advguard.v1 and Open Inference Protocol v2) do per call: find the model,
queue the images for a batch, map core errors to gRPC status codes, label the call's metrics."""
from __future__ import annotations

import asyncio

import grpc
import numpy as np

from serving.batching import BatcherClosedError, DeadlineExceededError, QueueFullError, RequestTooLargeError
from serving.interceptors import abort, call_labels
from serving.metrics import Metrics
from serving.pipeline import PipelineResult, verdict_name
from serving.preprocess import Limits
from serving.repository import UnknownModelError
from serving.served import ModelManager, ServedModel

# core error -> (status, retryable by the client as is)
STATUS_OF = {
    QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RequestTooLargeError: grpc.StatusCode.INVALID_ARGUMENT,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    BatcherClosedError: grpc.StatusCode.UNAVAILABLE,
    UnknownModelError: grpc.StatusCode.NOT_FOUND,
}
QUEUE_ERRORS = (QueueFullError, RequestTooLargeError, DeadlineExceededError, BatcherClosedError)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the event loop's clock (None: the client set none)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e7:
        return None
    return asyncio.get_running_loop().time() + remaining


def verdict_label(result: PipelineResult) -> str:
    """The most severe verdict in a result ('unguarded' when the guard did not run)."""
    if result.guard is None:
        return "unguarded"
    return verdict_name(int(result.guard.verdicts[result.guarded].max()))


class Dispatcher:
    def __init__(self, models: ModelManager, metrics: Metrics, limits: Limits) -> None:
        self.models = models
        self.metrics = metrics
        self.limits = limits

    async def model(self, name: str, version: str, context) -> ServedModel:
        try:
            return self.models.repo.get(name, version)
        except UnknownModelError as err:
            await abort(context, grpc.StatusCode.NOT_FOUND, str(err))

    async def infer(self, served: ServedModel, x: np.ndarray, guard: bool, context) -> PipelineResult:
        try:
            result = await served.batcher.submit(x, guard, deadline_of(context))
        except QUEUE_ERRORS as err:
            await abort(context, STATUS_OF[type(err)], str(err))
        self.label(served, result)
        return result

    @staticmethod
    def label(served: ServedModel, result: PipelineResult) -> str:
        """Set and return the call's model and verdict labels (the batcher counted the verdicts
        and flags once per batch, see `served.verdict_counter`)."""
        labels = call_labels()
        labels.model = served.bundle.name
        labels.verdict = verdict_label(result)
        return labels.verdict
