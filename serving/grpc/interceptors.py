"""One server interceptor: optional bearer-token auth and the per-call metrics of every method
(latency by model, method and verdict; calls by status code; calls in flight).

Handlers fill in what only they know (the model that answered, the verdict, the status they
aborted with) on the `CallLabels` that `call_labels()` returns inside a call.
"""
from __future__ import annotations

import hmac
import inspect
import time
from typing import Callable

import grpc
from google.protobuf.message import DecodeError

from serving.errors import not_a_request
from serving.grpc import codes
from serving.grpc.codes import AUTH_HEADER
from serving.grpc.status import abort
from serving.metrics import CallLabels, Metrics, set_call_labels


def _code_of(context, labels: CallLabels, err: BaseException | None) -> str:
    if labels.code:
        return labels.code
    if err is None:
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "OK"
    if isinstance(err, grpc.aio.AbortError):
        code = context.code()
        return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return "DEADLINE_EXCEEDED"
    return "CANCELLED" if isinstance(err, BaseException) and not isinstance(err, Exception) else "UNKNOWN"


def _unread(data: bytes) -> None:
    """The request deserializer of a refused call: drops the bytes unparsed."""
    return None


class _NotARequest:
    """What `_lenient` gives for bytes that do not parse: the call is answered INVALID_ARGUMENT
    with the message (grpc.aio alone would answer a failed deserializer INTERNAL)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _lenient(deserialize: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """A unary request deserializer that gives `_NotARequest` instead of raising."""
    descriptor = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    refused = _NotARequest(str(not_a_request(descriptor.full_name if descriptor is not None else "request")))

    def parse(data: bytes) -> object:
        try:
            return deserialize(data)
        except DecodeError:
            return refused
    return parse


UNAUTHENTICATED = (grpc.StatusCode[codes.UNAUTHENTICATED[0]], codes.UNAUTHENTICATED[1])
DRAINING = (grpc.StatusCode[codes.DRAINING[0]], codes.DRAINING[1])


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """`token`: when set, every method except `open_methods` needs metadata
    `authorization: Bearer <token>` (else UNAUTHENTICATED). Once `draining` is set (SIGTERM),
    new calls except `open_methods` get UNAVAILABLE while the accepted ones finish."""

    def __init__(self, metrics: Metrics, token: str | None = None, open_methods: frozenset[str] = frozenset()) -> None:
        self.metrics = metrics
        self.token = f"Bearer {token}".encode() if token else None
        self.open_methods = open_methods
        self.draining = False
        self._handlers: dict[tuple[str, tuple | None], grpc.RpcMethodHandler] = {}

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == AUTH_HEADER:
                value = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(value, self.token)
        return False

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        refusal = None
        if method not in self.open_methods:
            if self.draining:
                refusal = DRAINING
            elif self.token is not None and not self._authorized(details):
                refusal = UNAUTHENTICATED
        key = (method, refusal)
        wrapped = self._handlers.get(key)
        if wrapped is None:
            wrapped = self._handlers[key] = self._wrap(method, handler, refusal)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler, refusal: tuple | None = None) -> grpc.RpcMethodHandler:
        name = method.rsplit("/", 1)[-1]
        metrics = self.metrics
        in_flight = metrics.in_flight
        # this method's series, looked up once each (a label lookup costs a lock and a few tuples)
        requests: dict[str, object] = {}
        latency: dict[tuple[str, str], object] = {}

        def begin() -> tuple[CallLabels, float]:
            # each call runs in its own task (its own context copy): no reset needed
            labels = set_call_labels()
            in_flight.inc()
            return labels, time.perf_counter()

        def end(context, labels: CallLabels, began: float, err: BaseException | None) -> None:
            elapsed = time.perf_counter() - began
            in_flight.dec()
            code = _code_of(context, labels, err)
            counter = requests.get(code)
            if counter is None:
                counter = requests[code] = metrics.requests.labels(name, code)
            counter.inc()
            key = (labels.model, labels.verdict if code == "OK" else "error")
            histogram = latency.get(key)
            if histogram is None:
                histogram = latency[key] = metrics.latency.labels(key[0], name, key[1])
            histogram.observe(elapsed)

        async def refuse(context):
            await abort(context, *refusal)

        def unary(inner: Callable) -> Callable:
            async def behavior(request, context):
                labels, began = begin()
                err = None
                try:
                    if refusal:
                        await refuse(context)
                    if type(request) is _NotARequest:
                        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.message)
                    return await inner(request, context)
                except BaseException as caught:
                    err = caught
                    raise
                finally:
                    end(context, labels, began, err)
            return behavior

        def streaming(inner: Callable) -> Callable:
            if not inspect.isasyncgenfunction(inner):  # writes with context.write(): a coroutine
                return unary(inner)

            async def behavior(request, context):
                labels, began = begin()
                err = None
                try:
                    if refusal:
                        await refuse(context)
                    if type(request) is _NotARequest:
                        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.message)
                    async for response in inner(request, context):
                        yield response
                except BaseException as caught:
                    err = caught
                    raise
                finally:
                    end(context, labels, began, err)
            return behavior

        # a refused call's message is never parsed: it costs no CPU or memory beyond gRPC's own
        deserializer = _unread if refusal else handler.request_deserializer
        if deserializer is not None and not refusal and not handler.request_streaming:
            deserializer = _lenient(deserializer)  # bytes that are no request: INVALID_ARGUMENT, not INTERNAL
        kwargs = dict(request_deserializer=deserializer, response_serializer=handler.response_serializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **kwargs)
