"""Closed-loop HTTP/2 load from h2load (nghttp2's load generator, written in C).

A Python client on a 2-core machine takes as much CPU as the server it measures; h2load takes
a fraction of it, so the server's own rate and latency show. gRPC over h2load: every request
is the same length-prefixed message POSTed with `content-type: application/grpc` on one
HTTP/2 connection with `concurrency` streams (as one gRPC channel would). h2load does not read
gRPC trailers, so a call is counted successful only through its response body: a failed gRPC
call answers with trailers alone, no body; `grpc_load` divides the response bytes received by
the size of the one good answer (taken from a real gRPC call beforehand) and counts the rest
as errors. Install: `apt-get install nghttp2-client`.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from bench.loadgen import LoadResult


def available() -> bool:
    return shutil.which("h2load") is not None


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\0" + struct.pack(">I", len(message)) + message


def run(url: str, body: bytes, total: int, concurrency: int, headers: dict[str, str],
        rps: int | None = None) -> tuple[LoadResult, str]:
    """POST `body` `total` times over one HTTP/2 connection carrying `concurrency` streams, as
    fast as answers come (or `rps` requests a second); (latencies and HTTP outcome, h2load's report)."""
    with tempfile.TemporaryDirectory(prefix="advguard-h2load-") as tmp:
        data, log = Path(tmp) / "body", Path(tmp) / "log"
        data.write_bytes(body)
        cmd = ["h2load", "-n", str(total), "-t", "1", "-c", "1", "-m", str(concurrency), "-d", str(data),
               "--log-file", str(log)]
        for key, value in headers.items():
            cmd += ["-H", f"{key}: {value}"]
        if rps:
            cmd += ["--rps", str(rps)]
        out = subprocess.run([*cmd, url], check=False, capture_output=True, text=True, timeout=600).stdout
        result = LoadResult()
        for line in log.read_text().splitlines():  # start (us since epoch), HTTP status, elapsed (us)
            _, status, elapsed = line.split("\t")[:3]
            if status == "200":
                result.latencies.append(int(elapsed) / 1e6)
                result.codes["OK"] += 1
            else:
                result.codes[f"HTTP {status}"] += 1
    finished = re.search(r"finished in ([\d.]+)(ms|s),", out)
    if finished is None:
        raise RuntimeError(f"h2load printed no summary: {out[-500:]!r}")
    result.seconds = float(finished.group(1)) / (1e3 if finished.group(2) == "ms" else 1)
    missing = total - sum(result.codes.values())
    if missing:
        result.codes["no response"] += missing
    return result, out


def grpc_load(target: str, method: str, message: bytes, answer_size: int, total: int, concurrency: int,
              rps: int | None = None) -> LoadResult:
    """`total` unary gRPC calls of `method` ('/package.Service/Method') carrying `message`
    (`rps`: at that rate instead of closed-loop)."""
    result, out = run(f"http://{target}{method}", grpc_frame(message), total, concurrency,
                      {"content-type": "application/grpc", "te": "trailers"}, rps)
    body = re.search(r"traffic: .*?, [\d.]+\w*B \((\d+)\) data", out)
    if body is None:
        raise RuntimeError(f"h2load printed no traffic line: {out[-500:]!r}")
    answered = round(int(body.group(1)) / (answer_size + 5))
    failed = result.ok - answered
    if failed > 0:  # HTTP 200 with trailers only: gRPC errors, counted (their latencies stay in)
        result.codes["OK"] = answered
        result.codes["gRPC error (no body)"] += failed
    return result
