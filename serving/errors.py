"""The kinds of error the serving core raises. Each front end maps them to its wire's codes in
one table (`serving.grpc.status`, later `serving.rest`), so a kind means the same status everywhere.

    InputError             the request's input is unusable           INVALID_ARGUMENT / 400
    RequestTooLargeError   more images than the queue can ever take  INVALID_ARGUMENT / 400
    UnknownModelError      no such bundle name or version loaded     NOT_FOUND / 404
    PermissionDeniedError  the caller asked for what the server forbids PERMISSION_DENIED / 403
    QueueFullError         max_queue_size images wait already        RESOURCE_EXHAUSTED / 429
    DeadlineExceededError  the deadline passed while queued          DEADLINE_EXCEEDED / 504
    BatcherClosedError     the model is unloading or the server stops UNAVAILABLE / 503
"""
from __future__ import annotations


class InputError(ValueError):
    """The request's input is unusable; the message says what was wrong."""


def not_a_request(type_name: str) -> InputError:
    """Bytes that do not parse as the method's request message (e.g. `inference.ModelInferRequest`)."""
    return InputError(f"the request is not a serialized {type_name}")


class UnknownModelError(LookupError):
    """No such bundle name or version is loaded."""


class PermissionDeniedError(PermissionError):
    """The request asks for something this server does not allow (e.g. skipping the guard)."""


class QueueFullError(RuntimeError):
    """The queue holds max_queue_size images already."""


class RequestTooLargeError(ValueError):
    """One request holds more images than the queue can ever take."""


class DeadlineExceededError(TimeoutError):
    """The request's deadline passed while it waited for a batch."""


class BatcherClosedError(RuntimeError):
    """The batcher was closed (its model unloaded or the server stopping)."""


# errors a queued request can end with (everything but bad input and lookup)
QUEUE_ERRORS = (QueueFullError, RequestTooLargeError, DeadlineExceededError, BatcherClosedError)
# every kind a front end maps to a status
CORE_ERRORS = (InputError, UnknownModelError, PermissionDeniedError, *QUEUE_ERRORS)
