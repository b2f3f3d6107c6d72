"""The one table from the serving core's error kinds (`serving.errors`) to gRPC status codes
(`serving.grpc.codes`, read here as `grpc.StatusCode`s), and the one way a handler ends a call
with a status (recorded for the call's metrics first).
Handlers never pick codes for core errors themselves: they raise or let the core raise, and
`handle_errors` maps (MLServer's STATUS_CODE_MAPPING)."""
from __future__ import annotations

import functools
from typing import Callable

import grpc

from serving.grpc.codes import CODE_NAME_OF, code_name_of
from serving.metrics import call_labels

STATUS_OF: dict[type[Exception], grpc.StatusCode] = {kind: grpc.StatusCode[name] for kind, name in CODE_NAME_OF.items()}
CORE_ERRORS = tuple(STATUS_OF)


def status_of(err: Exception) -> grpc.StatusCode:
    """The status for a core error (its class or the nearest base class in the table)."""
    return grpc.StatusCode[code_name_of(err)]


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
