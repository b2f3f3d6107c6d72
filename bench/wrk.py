"""Closed-loop HTTP/1.1 load from wrk (a load generator written in C) for the TorchServe rows.

h2load cannot serve here: TorchServe answers `HTTP/1.1 200 ` (an empty reason phrase), which
h2load's HTTP/1 parser rejects; wrk reads it. wrk runs for a fixed time on `concurrency`
keep-alive connections (one request in flight on each) and reports, through the Lua `done`
hook below, the calls answered with a 2xx, the others, and the 50th and 99th latency
percentiles from its histogram. Install: `apt-get install wrk`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.loadgen import LoadResult

SCRIPT = """
local f = io.open(os.getenv("ADVGUARD_WRK_BODY"), "rb"); wrk.body = f:read("*all"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("ADVGUARD_WRK_TYPE")
if os.getenv("ADVGUARD_WRK_AUTH") then wrk.headers["Authorization"] = os.getenv("ADVGUARD_WRK_AUTH") end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('ADVGUARD {"requests": %d, "seconds": %f, "non2xx": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


class SummaryResult(LoadResult):
    """A LoadResult that holds percentiles, not every latency (wrk reports a histogram's)."""

    def __init__(self, percentiles: dict[float, float]) -> None:
        super().__init__()
        self.percentiles = percentiles

    def percentile(self, q: float) -> float:
        return self.percentiles[q]


def post_load(url: str, body: bytes, content_type: str, seconds: float, concurrency: int,
              token: str | None = None) -> LoadResult:
    """POST `body` to `url` for `seconds` from `concurrency` connections (`token`: sent as a
    bearer token, e.g. TorchServe's inference key)."""
    with tempfile.TemporaryDirectory(prefix="advguard-wrk-") as tmp:
        (Path(tmp) / "body").write_bytes(body)
        (Path(tmp) / "post.lua").write_text(SCRIPT)
        env = {**os.environ, "ADVGUARD_WRK_BODY": str(Path(tmp) / "body"), "ADVGUARD_WRK_TYPE": content_type,
               **({"ADVGUARD_WRK_AUTH": f"Bearer {token}"} if token else {})}
        out = subprocess.run(["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{seconds:g}s", "--timeout", "30s",
                              "-s", str(Path(tmp) / "post.lua"), url],
                             check=False, capture_output=True, text=True, timeout=seconds + 120, env=env).stdout
    line = next((line for line in out.splitlines() if line.startswith("ADVGUARD ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {out[-500:]!r}")
    stats = json.loads(line[len("ADVGUARD "):])
    result = SummaryResult({50: stats["p50_us"] / 1e6, 99: stats["p99_us"] / 1e6})
    result.codes["OK"] = stats["requests"] - stats["non2xx"]
    if stats["non2xx"]:
        result.codes["HTTP non-2xx"] = stats["non2xx"]
    if stats["socket_errors"]:
        result.codes["socket error"] = stats["socket_errors"]
    result.seconds = stats["seconds"]
    return result
