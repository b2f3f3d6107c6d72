"""advguard's own unary call as the benchmarks send it: `/advguard.v1.GuardedClassifier/Classify`
with one uint8 C x H x W tensor (bench.serve's unary rows, bench.peers' own-API rows).

h2load (bench/h2load.py) sends the request pre-serialized and counts a call as answered only
from its response body, so it needs the size of one good answer: `classify_once` makes one real
call and returns the answer with its size on the wire. Example:
    reply, size = classify_once("127.0.0.1:50051", classify_request("fmnist-fast", image))
"""
from __future__ import annotations

import grpc
import numpy as np

from protos.advguard.v1 import guard_pb2

CLASSIFY = "/advguard.v1.GuardedClassifier/Classify"


def image_messages(images: np.ndarray) -> list[guard_pb2.Image]:
    """uint8 N x C x H x W -> one `Image` (a raw uint8 tensor) per image."""
    return [guard_pb2.Image(tensor=guard_pb2.Tensor(shape=list(x.shape), dtype=guard_pb2.DTYPE_UINT8,
                                                    data=x.tobytes())) for x in images]


def classify_request(model: str, image: np.ndarray, skip_guard: bool = False) -> guard_pb2.ClassifyRequest:
    """A Classify request for one uint8 C x H x W image (`skip_guard`: classify only, where the
    server allows it)."""
    return guard_pb2.ClassifyRequest(model=model, image=image_messages(image[None])[0], skip_guard=skip_guard)


def classify_once(target: str, request: guard_pb2.ClassifyRequest,
                  timeout: float = 60) -> tuple[guard_pb2.ClassifyResponse, int]:
    """One Classify call on a plaintext channel: (the answer, its serialized size as it came)."""
    with grpc.insecure_channel(target) as channel:
        raw = channel.unary_unary(CLASSIFY)(request.SerializeToString(), timeout=timeout)
    return guard_pb2.ClassifyResponse.FromString(raw), len(raw)
