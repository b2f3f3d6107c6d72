"""`advguard.v1.GuardedClassifier`: translates messages to arrays and back; the work is the core's."""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from serving.answer import Answers
from serving.errors import InputError
from serving.grpc.context import deadline_of
from serving.grpc.status import CORE_ERRORS, handle_errors, status_of
from serving.preprocess import check_count, request_pixels, tensor_to_array
from serving.runtime.decode import Decoder
from serving.runtime.dataplane import DataPlane, verdict_label
from serving.runtime.models import ServedModel

_DTYPE_NAMES = {guard_pb2.DTYPE_UINT8: "uint8", guard_pb2.DTYPE_FLOAT32: "float32"}
STREAM_WINDOW = 1024  # images of a stream queued ahead of the item being answered
STREAM_PENDING = 256  # stream items (answers or errors) waiting for the client to read them


def tensor_image(t: guard_pb2.Tensor, spec) -> np.ndarray:
    """One C x H x W Tensor message -> float32 in [0, 1]."""
    dtype = _DTYPE_NAMES.get(t.dtype)
    if dtype is None:
        raise InputError("tensor dtype is unspecified; set DTYPE_UINT8 or DTYPE_FLOAT32")
    return tensor_to_array(tuple(t.shape), dtype, t.data, spec)


def batch_to_array(t: guard_pb2.Tensor, served: ServedModel) -> np.ndarray:
    """An N x C x H x W Tensor message -> float32 in [0, 1]; InputError says what was wrong."""
    dtype = _DTYPE_NAMES.get(t.dtype)
    if dtype is None:
        raise InputError("batch tensor dtype is unspecified; set DTYPE_UINT8 or DTYPE_FLOAT32")
    return tensor_to_array(tuple(t.shape), dtype, t.data, served.bundle.input, batched=True)


async def images_to_array(images, served: ServedModel, decoder: Decoder) -> np.ndarray:
    """Image messages -> N x C x H x W float32: the count and every encoded header checked before
    anything is decoded; encoded images decoded by `decoder` (off the event loop unless tiny)."""
    if not images:
        raise InputError("request has no images: set images or batch")
    check_count(len(images), decoder.limits)
    spec = served.bundle.input
    sources = [image.WhichOneof("source") for image in images]
    if sources == ["tensor"]:  # one raw tensor (the common unary call): no list, no copy
        return tensor_image(images[0].tensor, spec)[None]
    if all(source == "encoded" for source in sources):
        return await decoder.decode([image.encoded for image in images], spec)
    request_pixels([image.encoded for image, source in zip(images, sources) if source == "encoded"], decoder.limits)
    out = []
    for i, (image, source) in enumerate(zip(images, sources)):
        try:
            if source == "encoded":
                out.append((await decoder.decode([image.encoded], spec))[0])
            elif source == "tensor":
                out.append(tensor_image(image.tensor, spec))
            else:
                raise InputError("request has no image: set image.encoded (PNG/JPEG bytes) or image.tensor")
        except InputError as err:
            raise InputError(f"image {i}: {err}" if len(images) > 1 else str(err)) from None
    return np.stack(out)


async def stream_item_to_array(request: guard_pb2.ClassifyRequest, served: ServedModel, decoder: Decoder) -> np.ndarray:
    """A ClassifyStream item -> N x C x H x W: its `batch`, or its one `image`."""
    if request.HasField("batch"):
        if request.HasField("image"):
            raise InputError("set either image or batch, not both")
        return batch_to_array(request.batch, served)
    return await images_to_array([request.image], served, decoder)


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


def to_response(answers: Answers, i: int, request_id: str = "") -> guard_pb2.ClassifyResponse:
    """Image i of `answers` as a ClassifyResponse (what to show is the answer builder's call)."""
    response = guard_pb2.ClassifyResponse(model=answers.model, model_version=answers.model_version,
                                          answered_by=answers.answered_by(i), request_id=request_id,
                                          class_index=answers.class_index(i))
    if not answers.withheld(i):
        response.class_name = answers.class_name(i)
        response.probabilities.extend(answers.probabilities(i))
    if answers.guarded(i):
        response.verdict = answers.verdict(i)
        response.attack_score = answers.attack_score(i)
        response.action = answers.action
        for d in answers.detectors(i):
            response.detectors.add(**d)
    return response


def model_info(plane: DataPlane, served: ServedModel) -> guard_pb2.ModelInfo:
    bundle, pipeline = served.bundle, served.pipeline
    info = guard_pb2.ModelInfo(
        name=bundle.name, version=bundle.version, versions=plane.versions(bundle.name),
        dataset=bundle.dataset, labels=list(bundle.labels), input_shape=list(bundle.input.shape),
        created=bundle.created, ready=True, guard_policy=pipeline.policy.combine,
        guard_action=pipeline.policy.action)
    for f in bundle.models:
        info.files.add(file=f.file, sha256=f.sha256, role=f.role)
    for d in pipeline.detectors:  # thresholds only under full disclosure
        info.detectors.add(name=d.detector.name, threshold=d.threshold if plane.full else 0.0,
                           calibrated_fpr=d.target_fpr)
    info.robustness_card_json = json.dumps(bundle.robustness or {})
    info.verdict_calibration_json = json.dumps((bundle.guard or {}).get("verdict", {}))
    return info


class GuardedClassifierServicer(guard_pb2_grpc.GuardedClassifierServicer):
    """Wire decode -> data plane -> answers -> wire encode; core errors end the call with the
    status `serving.grpc.status` gives them."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.decoder = plane.decoder

    @handle_errors
    async def Classify(self, request, context):
        if request.HasField("batch"):
            raise InputError("batch is for ClassifyStream items; send many images in one call with ClassifyBatch")
        served = self.plane.model(request.model, request.version)
        x = await images_to_array([request.image], served, self.decoder)
        deadline = deadline_of(context, self.plane.default_deadline)
        answers = await self.plane.classify(served, x, not request.skip_guard, deadline)
        return to_response(answers, 0, request.request_id)

    @handle_errors
    async def ClassifyBatch(self, request, context):
        served = self.plane.model(request.model, request.version)
        if request.images and request.HasField("batch"):
            raise InputError("set either images or batch, not both")
        if request.HasField("batch"):
            x = batch_to_array(request.batch, served)
        else:
            x = await images_to_array(request.images, served, self.decoder)
        deadline = deadline_of(context, self.plane.default_deadline)
        answers = await self.plane.classify(served, x, not request.skip_guard, deadline)
        return guard_pb2.ClassifyBatchResponse(results=[to_response(answers, i) for i in range(len(x))])

    async def ClassifyStream(self, request_iterator, context):
        """Items (one image, or a batch) are queued as they arrive, up to STREAM_WINDOW images
        ahead, and answered in order; a bad item gets a response with `error` set and the
        stream goes on."""
        window = ImageWindow(STREAM_WINDOW)
        pending: asyncio.Queue = asyncio.Queue(maxsize=STREAM_PENDING)  # a client that stops reading stops ours
        plane = self.plane

        async def read() -> None:
            try:
                async for request in request_iterator:
                    began = time.perf_counter()
                    try:
                        served = plane.model(request.model, request.version)
                        x = await stream_item_to_array(request, served, self.decoder)
                        await window.acquire(len(x))
                        try:
                            deadline = deadline_of(context, plane.default_deadline)
                            future = plane.submit_nowait(served, x, not request.skip_guard, deadline)
                        except BaseException:
                            await window.release(len(x))  # never submitted: give its images back
                            raise
                        item = (request, served, future, began, None, len(x))
                    except CORE_ERRORS as err:
                        item = (request, None, None, began, stream_error(err), 0)
                    await pending.put(item)
                await pending.put(None)
            except BaseException as err:  # the call ended under us: wake the writer
                while pending.full():  # the writer is gone or stuck; make room for the wake-up
                    pending.get_nowait()
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
                    except CORE_ERRORS as err:
                        error = stream_error(err)
                await window.release(n)
                if error is not None:
                    yield guard_pb2.ClassifyResponse(request_id=request.request_id, error=error)
                    continue
                answers = plane.answers(served, result)
                if request.HasField("batch"):
                    response = guard_pb2.ClassifyResponse(
                        request_id=request.request_id, model=answers.model, model_version=answers.model_version,
                        results=[to_response(answers, i) for i in range(n)])
                else:
                    response = to_response(answers, 0, request.request_id)
                plane.metrics.stream_item_latency.labels(answers.model, verdict_label(result)).observe(
                    time.perf_counter() - began)
                yield response
        finally:
            reader.cancel()

    async def ListModels(self, request, context):
        plane = self.plane
        return guard_pb2.ListModelsResponse(models=[model_info(plane, plane.model(name)) for name in plane.names()])

    @handle_errors
    async def GetModel(self, request, context):
        return model_info(self.plane, self.plane.model(request.name, request.version))


def stream_error(err: Exception) -> guard_pb2.Error:
    """A ClassifyStream item's error, with the status code the table gives its kind."""
    return guard_pb2.Error(code=status_of(err).value[0], message=str(err))


__all__ = ["GuardedClassifierServicer", "images_to_array", "to_response", "model_info"]
