"""What a gRPC handler reads off its call's context, in the core's terms."""
from __future__ import annotations

import asyncio

import grpc


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the event loop's clock (None: the client set none)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e7:
        return None
    return asyncio.get_running_loop().time() + remaining
