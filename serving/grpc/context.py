"""What a gRPC handler reads off its call's context, in the core's terms."""
from __future__ import annotations

import asyncio

import grpc


def deadline_of(context: grpc.aio.ServicerContext, default: float | None) -> float | None:
    """The call's deadline on the event loop's clock: the client's, else `default` seconds from
    now (None: no deadline)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e7:
        if default is None:
            return None
        remaining = default
    return asyncio.get_running_loop().time() + remaining
