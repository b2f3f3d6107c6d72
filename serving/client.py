"""A small client: `advguard classify --target HOST:PORT IMAGE...`."""
from __future__ import annotations

import sys
from pathlib import Path

import grpc

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc

VERDICTS = {v: k for k, v in guard_pb2.Verdict.items()}


def classify_files(target: str, images: list[Path], model: str = "", timeout: float = 10.0) -> int:
    """Classify each file; prints `file class name probability verdict`. Returns an exit code."""
    failures = 0
    with grpc.insecure_channel(target) as channel:
        stub = guard_pb2_grpc.GuardedClassifierStub(channel)
        for path in images:
            try:
                data = Path(path).read_bytes()
            except OSError as err:
                print(f"{path}\terror: {err}", file=sys.stderr)
                failures += 1
                continue
            request = guard_pb2.ClassifyRequest(model=model, image=guard_pb2.Image(encoded=data))
            try:
                reply = stub.Classify(request, timeout=timeout)
            except grpc.RpcError as err:
                print(f"{path}\terror: {err.code().name}: {err.details()}", file=sys.stderr)
                failures += 1
                continue
            prob = reply.probabilities[reply.class_index]
            print(f"{path}\t{reply.class_index}\t{reply.class_name}\t{prob:.4f}\t{VERDICTS[reply.verdict]}")
    return 1 if failures else 0
