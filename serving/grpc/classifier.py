"""`advguard.v1.GuardedClassifier`: translates messages to arrays and back; the work is the core's."""
from __future__ import annotations

import asyncio
import time

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc
from serving.grpc.classify import (  # the message code, shared with serving.native
    batch_input, batch_response, classify_input, images_to_array, list_models, model_info, stream_item_to_array,
    to_response,
)
from serving.grpc.context import deadline_of
from serving.grpc.status import CORE_ERRORS, handle_errors, status_of
from serving.runtime.dataplane import DataPlane, verdict_label

STREAM_WINDOW = 1024  # images of a stream queued ahead of the item being answered
STREAM_PENDING = 256  # stream items (answers or errors) waiting for the client to read them


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


class GuardedClassifierServicer(guard_pb2_grpc.GuardedClassifierServicer):
    """Wire decode -> data plane -> answers -> wire encode; core errors end the call with the
    status `serving.grpc.status` gives them."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.decoder = plane.decoder

    @handle_errors
    async def Classify(self, request, context):
        served, x = await classify_input(self.plane, request, self.decoder)
        deadline = deadline_of(context, self.plane.default_deadline)
        answers = await self.plane.classify(served, x, not request.skip_guard, deadline)
        return to_response(answers, 0, request.request_id)

    @handle_errors
    async def ClassifyBatch(self, request, context):
        served, x = await batch_input(self.plane, request, self.decoder)
        deadline = deadline_of(context, self.plane.default_deadline)
        return batch_response(await self.plane.classify(served, x, not request.skip_guard, deadline))

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
        return list_models(self.plane)

    @handle_errors
    async def GetModel(self, request, context):
        return model_info(self.plane, self.plane.model(request.name, request.version))


def stream_error(err: Exception) -> guard_pb2.Error:
    """A ClassifyStream item's error, with the status code the table gives its kind."""
    return guard_pb2.Error(code=status_of(err).value[0], message=str(err))


__all__ = ["GuardedClassifierServicer", "images_to_array", "to_response", "model_info"]
