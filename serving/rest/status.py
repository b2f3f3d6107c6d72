"""The one table from the serving core's error kinds (`serving.errors`) to HTTP status codes,
and the error body every REST answer uses (`{"error": "<what was wrong>"}`, as KServe's).
Handlers never pick codes for core errors: they raise or let the core raise, and the app maps
(MLServer's STATUS_CODE_MAPPING). `HTTPError` is for what only the HTTP shell knows (no such
route, missing token, a body over the size limit, a server shutting down)."""
from __future__ import annotations

import json

from serving.errors import (
    BatcherClosedError, DeadlineExceededError, InputError, PermissionDeniedError, QueueFullError, RequestTooLargeError,
    UnknownModelError,
)

STATUS_OF: dict[type[Exception], int] = {
    InputError: 400,
    RequestTooLargeError: 400,
    UnknownModelError: 404,
    PermissionDeniedError: 403,
    QueueFullError: 429,
    DeadlineExceededError: 504,
    BatcherClosedError: 503,
}
CORE_ERRORS = tuple(STATUS_OF)


class HTTPError(Exception):
    """An error of the HTTP shell itself, with its status (401, 404, 405, 413, 429, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_of(err: Exception) -> int:
    """The HTTP status for an error (a core error's class or the nearest base class in the
    table; an HTTPError's own status); 500 for anything else."""
    if isinstance(err, HTTPError):
        return err.status
    for kind in type(err).__mro__:
        code = STATUS_OF.get(kind)
        if code is not None:
            return code
    return 500


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


# (status, message) of the shell's refusals: raise HTTPError(*UNAUTHENTICATED)
UNAUTHENTICATED = (401, "missing or wrong bearer token: send header 'Authorization: Bearer <token>'")
DRAINING = (503, "server is shutting down; retry (on another replica)")
