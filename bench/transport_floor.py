"""`python -m bench.transport_floor`: the empty health check on advguard's server (Python,
grpc.aio) next to the same call on a C++ gRPC server, from h2load on the same machine, and the
ratio: how much of a call's cost is the Python gRPC stack, and what a non-Python front end
would have to beat.

The C++ server (bench/cpp_health/health_server.cc, grpc.health.v1 Check only) is built into
build/cpp_health/ on first use with g++ and Debian's gRPC (`apt-get install g++ pkg-config
libgrpc++-dev protobuf-compiler-grpc`). Example:
    python -m bench.transport_floor --store model_store
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench import h2load
from advguard.cli.serve import parse_ready

SOURCE = Path(__file__).parent / "cpp_health"
BUILD = Path(__file__).resolve().parents[1] / "build" / "cpp_health"
CHECK = "/grpc.health.v1.Health/Check"
ANSWER = 2  # HealthCheckResponse{status: SERVING}, serialized
CONCURRENCY = (1, 8, 32)
TOOLS = ("g++", "pkg-config", "protoc", "grpc_cpp_plugin")


def build() -> Path:
    """The C++ server's binary, compiled if missing; SystemExit naming what to install."""
    binary = BUILD / "health_server"
    if binary.exists():
        return binary
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing or subprocess.run(["pkg-config", "--exists", "grpc++"], check=False).returncode:
        raise SystemExit(f"cannot build the C++ server (missing: {', '.join(missing) or 'grpc++ pkg-config'}): "
                         "apt-get install g++ pkg-config libgrpc++-dev protobuf-compiler-grpc")
    BUILD.mkdir(parents=True, exist_ok=True)
    subprocess.run(["protoc", f"-I{SOURCE}", f"--cpp_out={BUILD}", f"--grpc_out={BUILD}",
                    f"--plugin=protoc-gen-grpc={shutil.which('grpc_cpp_plugin')}", str(SOURCE / "health.proto")], check=True)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++", "protobuf"], check=True,
                           capture_output=True, text=True).stdout.split()
    subprocess.run(["g++", "-O2", "-std=c++17", f"-I{BUILD}", "-o", str(binary), str(SOURCE / "health_server.cc"),
                    str(BUILD / "health.pb.cc"), str(BUILD / "health.grpc.pb.cc"), *flags], check=True)
    return binary


def start(cmd: list[str], ready: Callable[[str], int]) -> tuple[subprocess.Popen, int]:
    """Start a server that prints one line once it listens; (process, its port)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    try:
        return proc, ready(line)
    except (ValueError, KeyError) as err:
        proc.kill()
        raise SystemExit(f"{cmd[0]} did not start: {line!r}") from err


def health_rows(name: str, port: int, calls: dict[int, int]) -> list[tuple[str, int, float, float]]:
    target = f"127.0.0.1:{port}"
    h2load.grpc_load(target, CHECK, b"", ANSWER, 500, 8)  # warm up
    rows = []
    for c in CONCURRENCY:
        result = h2load.grpc_load(target, CHECK, b"", ANSWER, calls[c], c)
        if result.errors:
            raise SystemExit(f"{name}: {result.errors} failed health checks at c={c}: {dict(result.codes)}")
        rows.append((name, c, result.rate, result.percentile(99) * 1e3))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="model_store", help="any store `advguard serve` can load")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the number of calls")
    args = p.parse_args(argv)
    if not h2load.available():
        raise SystemExit("h2load missing: make loadgen-tools (apt-get install nghttp2-client)")
    calls = {c: int(n * args.scale) for c, n in {1: 2000, 8: 20000, 32: 40000}.items()}
    binary = build()
    print(f"{os.cpu_count()} CPUs; h2load, one HTTP/2 connection with c streams; grpc.health.v1 Check")
    rows = []
    for name, cmd, ready in (
            ("advguard serve (Python, grpc.aio)",
             [sys.executable, "-m", "advguard.cli.main", "serve", "--store", args.store, "--port", "0", "--no-metrics",
              "--poll-seconds", "0"],
             lambda line: parse_ready(line)["port"]),
            ("C++ gRPC server", [str(binary)], lambda line: int(line))):
        proc, port = start(cmd, ready)
        try:
            rows += health_rows(name, port, calls)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"{'server':36} {'c':>3} {'req/s':>9} {'p99 ms':>8}")
    for name, c, rate, p99 in rows:
        print(f"{name:36} {c:>3} {rate:>9.0f} {p99:>8.2f}")
    python = {c: rate for name, c, rate, _ in rows if name.startswith("advguard")}
    cpp = {c: rate for name, c, rate, _ in rows if name.startswith("C++")}
    print("\nPython / C++ health-check rate: " + ", ".join(f"c={c} {python[c] / cpp[c]:.2f}" for c in CONCURRENCY))
    return 0


if __name__ == "__main__":
    sys.exit(main())
