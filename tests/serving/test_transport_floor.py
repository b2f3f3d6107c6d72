"""bench/transport_floor.py: the C++ reference server builds, answers health checks that h2load
counts, and is compared with ours. Skipped where the C++ toolchain or h2load is missing."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from bench import h2load, transport_floor

pytestmark = pytest.mark.skipif(
    h2load.available() is False or any(shutil.which(t) is None for t in transport_floor.TOOLS)
    or subprocess.run(["pkg-config", "--exists", "grpc++"], check=False).returncode != 0,
    reason="needs h2load and apt-get install g++ pkg-config libgrpc++-dev protobuf-compiler-grpc")


def test_cpp_health_server_answers_every_check():
    proc, port = transport_floor.start([str(transport_floor.build())], int)
    try:
        rows = transport_floor.health_rows("C++", port, {1: 50, 8: 200, 32: 400})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert [(c, rate > 0, p99 > 0) for _, c, rate, p99 in rows] == [(1, True, True), (8, True, True), (32, True, True)]
