"""`advguard.v1.GuardedClassifier`: translates messages to arrays and back; the work is the core's."""
from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from serving.dispatch import QUEUE_ERRORS, STATUS_OF, Dispatcher, deadline_of, verdict_label
from serving.interceptors import abort
from serving.pipeline import PipelineResult
from serving.preprocess import InputError, Limits, decode_image, tensor_to_array
from serving.repository import UnknownModelError
from serving.served import ServedModel

_DTYPE_NAMES = {guard_pb2.DTYPE_UINT8: "uint8", guard_pb2.DTYPE_FLOAT32: "float32"}
STREAM_WINDOW = 1024       # images of a stream queued ahead of the item being answered
OFFLOAD_BYTES = 64 * 1024  # encoded images larger than this are decoded off the event loop


def image_to_array(image: guard_pb2.Image, served: ServedModel, limits: Limits) -> np.ndarray:
    """One Image message -> C x H x W float32 in [0, 1]; InputError says what was wrong."""
    source = image.WhichOneof("source")
    spec = served.bundle.input
    if source == "encoded":
        return decode_image(image.encoded, spec, limits)
    if source == "tensor":
        t = image.tensor
        dtype = _DTYPE_NAMES.get(t.dtype)
        if dtype is None:
            raise InputError("tensor dtype is unspecified; set DTYPE_UINT8 or DTYPE_FLOAT32")
        return tensor_to_array(tuple(t.shape), dtype, t.data, spec)
    raise InputError("request has no image: set image.encoded (PNG/JPEG bytes) or image.tensor")


def batch_to_array(t: guard_pb2.Tensor, served: ServedModel) -> np.ndarray:
    """An N x C x H x W Tensor message -> float32 in [0, 1]; InputError says what was wrong."""
    dtype = _DTYPE_NAMES.get(t.dtype)
    if dtype is None:
        raise InputError("batch tensor dtype is unspecified; set DTYPE_UINT8 or DTYPE_FLOAT32")
    return tensor_to_array(tuple(t.shape), dtype, t.data, served.bundle.input, batched=True)


async def stream_item_to_array(request: guard_pb2.ClassifyRequest, served: ServedModel, limits: Limits) -> np.ndarray:
    """A ClassifyStream item -> N x C x H x W: its `batch`, or its one `image`."""
    if request.HasField("batch"):
        if request.HasField("image"):
            raise InputError("set either image or batch, not both")
        return batch_to_array(request.batch, served)
    return (await decode(request.image, served, limits))[None]


class ImageWindow:
    """At most `limit` images in flight; one item larger than that may go alone."""

    def __init__(self, limit: int) -> None:
        self.limit, self.in_flight = limit, 0
        self.changed = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.in_flight == 0 or self.in_flight + n <= self.limit)
            self.in_flight += n

    async def release(self, n: int) -> None:
        async with self.changed:
            self.in_flight -= n
            self.changed.notify_all()


async def decode(image: guard_pb2.Image, served: ServedModel, limits: Limits) -> np.ndarray:
    if image.WhichOneof("source") == "encoded" and len(image.encoded) > OFFLOAD_BYTES:
        return await asyncio.to_thread(image_to_array, image, served, limits)
    return image_to_array(image, served, limits)


def to_response(served: ServedModel, result: PipelineResult, i: int, request_id: str = "") -> guard_pb2.ClassifyResponse:
    bundle = served.bundle
    response = guard_pb2.ClassifyResponse(model=bundle.name, model_version=bundle.version,
                                          answered_by=result.answered_by[i], request_id=request_id)
    if result.rejected[i]:
        response.class_index = -1  # withheld: the policy rejects adversarial inputs
    else:
        index = int(result.classes[i])
        response.class_index = index
        response.class_name = bundle.labels[index]
        response.probabilities.extend(result.probs[i].tolist())
    if result.guard is not None and result.guarded[i]:
        guard = result.guard
        response.verdict = int(guard.verdicts[i])
        response.attack_score = float(guard.attack_scores[i])
        response.action = served.pipeline.policy.action
        for o in guard.outcomes:
            response.detectors.add(name=o.name, score=float(o.scores[i]), threshold=o.threshold,
                                   flagged=bool(o.flagged[i]), calibrated_fpr=o.target_fpr)
    return response


def model_info(dispatcher: Dispatcher, served: ServedModel) -> guard_pb2.ModelInfo:
    bundle, pipeline = served.bundle, served.pipeline
    info = guard_pb2.ModelInfo(
        name=bundle.name, version=bundle.version, versions=dispatcher.models.repo.versions(bundle.name),
        dataset=bundle.dataset, labels=list(bundle.labels), input_shape=list(bundle.input.shape),
        created=bundle.created, ready=True, guard_policy=pipeline.policy.combine,
        guard_action=pipeline.policy.action)
    for f in bundle.models:
        info.files.add(file=f.file, sha256=f.sha256, role=f.role)
    for d in pipeline.detectors:
        info.detectors.add(name=d.detector.name, threshold=d.threshold, calibrated_fpr=d.target_fpr)
    return info


class GuardedClassifierServicer(guard_pb2_grpc.GuardedClassifierServicer):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.limits = dispatcher.limits

    async def _decode(self, image, served, context, where: str = "") -> np.ndarray:
        try:
            return await decode(image, served, self.limits)
        except InputError as err:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{where}{err}")

    async def Classify(self, request, context):
        if request.HasField("batch"):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        "batch is for ClassifyStream items; send many images in one call with ClassifyBatch")
        served = await self.dispatcher.model(request.model, request.version, context)
        x = await self._decode(request.image, served, context)
        result = await self.dispatcher.infer(served, x[None], not request.skip_guard, context)
        return to_response(served, result, 0, request.request_id)

    async def ClassifyBatch(self, request, context):
        served = await self.dispatcher.model(request.model, request.version, context)
        if request.images and request.HasField("batch"):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "set either images or batch, not both")
        if request.HasField("batch"):
            try:
                x = batch_to_array(request.batch, served)
            except InputError as err:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        elif request.images:
            x = np.stack([await self._decode(image, served, context, f"image {i}: ")
                          for i, image in enumerate(request.images)])
        else:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "request has no images: set images or batch")
        result = await self.dispatcher.infer(served, x, not request.skip_guard, context)
        return guard_pb2.ClassifyBatchResponse(results=[to_response(served, result, i) for i in range(len(x))])

    async def ClassifyStream(self, request_iterator, context):
        """Items (one image, or a batch) are queued as they arrive, up to STREAM_WINDOW images
        ahead, and answered in order; a bad item gets a response with `error` set and the
        stream goes on."""
        window = ImageWindow(STREAM_WINDOW)
        pending: asyncio.Queue = asyncio.Queue()
        dispatcher = self.dispatcher

        async def read() -> None:
            try:
                async for request in request_iterator:
                    began = time.perf_counter()
                    try:
                        served = dispatcher.models.repo.get(request.model, request.version)
                        x = await stream_item_to_array(request, served, self.limits)
                        await window.acquire(len(x))
                        future = served.batcher.submit_nowait(x, not request.skip_guard, deadline_of(context))
                        pending.put_nowait((request, served, future, began, None, len(x)))
                    except (UnknownModelError, InputError, *QUEUE_ERRORS) as err:
                        code = STATUS_OF.get(type(err), grpc.StatusCode.INVALID_ARGUMENT)
                        error = guard_pb2.Error(code=code.value[0], message=str(err))
                        pending.put_nowait((request, None, None, began, error, 0))
                pending.put_nowait(None)
            except BaseException as err:  # the call ended under us: wake the writer
                pending.put_nowait(err)
                raise

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (item := await pending.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                request, served, future, began, error, n = item
                if error is None:
                    try:
                        result = await future
                    except QUEUE_ERRORS as err:
                        error = guard_pb2.Error(code=STATUS_OF[type(err)].value[0], message=str(err))
                await window.release(n)
                if error is not None:
                    yield guard_pb2.ClassifyResponse(request_id=request.request_id, error=error)
                    continue
                verdict = dispatcher.label(served, result)
                if request.HasField("batch"):
                    response = guard_pb2.ClassifyResponse(
                        request_id=request.request_id, model=served.bundle.name, model_version=served.bundle.version,
                        results=[to_response(served, result, i) for i in range(n)])
                else:
                    response = to_response(served, result, 0, request.request_id)
                dispatcher.metrics.stream_item_latency.labels(served.bundle.name, verdict).observe(
                    time.perf_counter() - began)
                yield response
        finally:
            reader.cancel()

    async def ListModels(self, request, context):
        repo = self.dispatcher.models.repo
        return guard_pb2.ListModelsResponse(models=[model_info(self.dispatcher, repo.get(name)) for name in repo.names()])

    async def GetModel(self, request, context):
        served = await self.dispatcher.model(request.name, request.version, context)
        return model_info(self.dispatcher, served)


__all__ = ["GuardedClassifierServicer", "image_to_array", "to_response", "model_info", "verdict_label"]
