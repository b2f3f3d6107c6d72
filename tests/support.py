"""Small helpers shared by tests: free ports and encoded images (tests that talk to real
servers), one torch thread (tests that train)."""
from __future__ import annotations

import contextlib
import io
import socket

import numpy as np
from PIL import Image


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encode_image(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    """PNG/JPEG bytes of an H x W (or H x W x C) image: uint8 as is, floats in [0, 1] scaled."""
    if pixels.dtype != np.uint8:
        pixels = (np.asarray(pixels) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def uint8_and_png_inputs(x: np.ndarray) -> tuple:
    """The same N x 1 x H x W uint8 images as two tritonclient (gRPC) inputs: a UINT8 tensor and a
    BYTES tensor of PNG files."""
    import tritonclient.grpc as tc

    as_uint8 = tc.InferInput("input", list(x.shape), "UINT8")
    as_uint8.set_data_from_numpy(x)
    as_png = tc.InferInput("input", [len(x)], "BYTES")
    as_png.set_data_from_numpy(np.array([encode_image(image[0]) for image in x], dtype=np.object_))
    return as_uint8, as_png


@contextlib.contextmanager
def one_thread():
    """One torch intra-op thread inside the block, the previous count restored after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
