"""A closed-loop load generator for async gRPC calls: `concurrency` workers, each issuing its
next call as soon as the previous one returns, until `total` calls are done."""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc
import numpy as np


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, successful calls
    codes: Counter = field(default_factory=Counter)        # status name -> calls
    details: dict[str, str] = field(default_factory=dict)  # status name -> one message
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return self.codes.get("OK", 0)

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "OK")

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


async def run_load(call: Callable[[int], Awaitable], total: int, concurrency: int,
                   stop: asyncio.Event | None = None) -> LoadResult:
    """Run `call(i)` for i in 0..total-1 from `concurrency` workers (stopping early once `stop`
    is set); RpcErrors are counted by status code, not raised."""
    result = LoadResult()
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            if stop is not None and stop.is_set():
                return
            began = time.perf_counter()
            try:
                await call(i)
            except grpc.RpcError as err:
                code = err.code().name
                result.codes[code] += 1
                result.details.setdefault(code, err.details() or "")
                continue
            result.latencies.append(time.perf_counter() - began)
            result.codes["OK"] += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - began
    return result
