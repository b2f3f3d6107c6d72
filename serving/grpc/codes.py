"""The one table from the serving core's error kinds (`serving.errors`) to gRPC status codes, by
name and number, without importing grpc (this package's `__init__` imports nothing): grpc.aio's
`serving.grpc.status` reads it as `grpc.StatusCode`s, the native front end (`serving.native`,
another gRPC core in C++) as numbers."""
from __future__ import annotations

from serving.errors import (
    BatcherClosedError, DeadlineExceededError, InputError, PermissionDeniedError, QueueFullError, RequestTooLargeError,
    UnknownModelError,
)

CODE_NAME_OF: dict[type[Exception], str] = {
    InputError: "INVALID_ARGUMENT",
    RequestTooLargeError: "INVALID_ARGUMENT",
    UnknownModelError: "NOT_FOUND",
    PermissionDeniedError: "PERMISSION_DENIED",
    QueueFullError: "RESOURCE_EXHAUSTED",
    DeadlineExceededError: "DEADLINE_EXCEEDED",
    BatcherClosedError: "UNAVAILABLE",
}
AUTH_HEADER = "authorization"
# what a call refused before its handler runs is told (status name, message), by every gRPC front end
UNAUTHENTICATED = ("UNAUTHENTICATED", f"missing or wrong bearer token: send metadata '{AUTH_HEADER}: Bearer <token>'")
DRAINING = ("UNAVAILABLE", "server is shutting down; retry (on another replica)")
# the gRPC protocol's numbers for the codes a front end sends (grpc/status.h)
CODE_NUMBERS = {"OK": 0, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "PERMISSION_DENIED": 7,
                "RESOURCE_EXHAUSTED": 8, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
                "UNAUTHENTICATED": 16}
CODE_NAMES = {number: name for name, number in CODE_NUMBERS.items()}


def code_name_of(err: Exception) -> str:
    """The status name for a core error (its class or the nearest base class in the table;
    INTERNAL for anything else)."""
    for kind in type(err).__mro__:
        name = CODE_NAME_OF.get(kind)
        if name is not None:
            return name
    return "INTERNAL"
