"""The one table from the serving core's error kinds (`serving.errors`) to gRPC status codes,
and the one way a handler ends a call with a status (recorded for the call's metrics first).
Handlers never pick codes for core errors themselves: they raise or let the core raise, and
`handle_errors` maps (MLServer's STATUS_CODE_MAPPING)."""
from __future__ import annotations

import functools
from typing import Callable

import grpc

from serving.errors import (
    BatcherClosedError, DeadlineExceededError, InputError, PermissionDeniedError, QueueFullError, RequestTooLargeError,
    UnknownModelError,
)
from serving.metrics import call_labels

STATUS_OF: dict[type[Exception], grpc.StatusCode] = {
    InputError: grpc.StatusCode.INVALID_ARGUMENT,
    RequestTooLargeError: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownModelError: grpc.StatusCode.NOT_FOUND,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    BatcherClosedError: grpc.StatusCode.UNAVAILABLE,
}
CORE_ERRORS = tuple(STATUS_OF)


def status_of(err: Exception) -> grpc.StatusCode:
    """The status for a core error (its class or the nearest base class in the table)."""
    for kind in type(err).__mro__:
        code = STATUS_OF.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str):
    """`context.abort`, recording the code for the metrics first."""
    call_labels().code = code.name
    await context.abort(code, message)


def handle_errors(method: Callable) -> Callable:
    """Decorate a unary servicer method: a core error it raises ends the call with its status."""
    @functools.wraps(method)
    async def handler(self, request, context):
        try:
            return await method(self, request, context)
        except CORE_ERRORS as err:
            await abort(context, status_of(err), str(err))
    return handler
