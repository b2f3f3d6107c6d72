"""Every bad input gets a precise status and message (the shared server's limits: 256 KiB
encoded images, 1,000,000 pixels, 1 MiB messages)."""
from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from protos.advguard.v1 import guard_pb2, guard_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as channel:
        yield guard_pb2_grpc.GuardedClassifierStub(channel)


def encoded(size=(28, 28), mode="L", fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 0).save(buffer, format=fmt)
    return buffer.getvalue()


def tensor(shape, dtype=guard_pb2.DTYPE_FLOAT32, data=None, fill=0.5) -> guard_pb2.Image:
    if data is None:
        np_dtype = "<f4" if dtype == guard_pb2.DTYPE_FLOAT32 else np.uint8
        data = np.full(shape, fill, dtype=np_dtype).tobytes()
    return guard_pb2.Image(tensor=guard_pb2.Tensor(shape=shape, dtype=dtype, data=data))


BAD_INPUTS = {
    "no image": (guard_pb2.ClassifyRequest(), INVALID, "request has no image"),
    "empty bytes": (guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=b"")), INVALID, "image bytes are empty"),
    "not an image": (guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=b"GIF89a not really")), INVALID,
                     "not a PNG or JPEG file"),
    "other format": (guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=encoded(fmt="BMP"))), INVALID,
                     "not a PNG or JPEG file"),  # other formats are never even parsed
    "truncated png": (guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=encoded((28, 28), "RGB")[:60])),
                      INVALID, "truncated or corrupt"),
    "encoded size cap": (guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=b"\x89PNG" + bytes(300_000))),
                         INVALID, "encoded image is 300004 bytes; the limit is 262144"),
    "decompression bomb": (guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=encoded((2000, 2000)))),
                           INVALID, "image is 2000x2000 = 4000000 pixels; the limit is 1000000 (decompression bomb guard)"),
    "wrong channels": (guard_pb2.ClassifyRequest(image=tensor([3, 28, 28])), INVALID,
                       "has 3 channels; the model takes 1"),
    "wrong size": (guard_pb2.ClassifyRequest(image=tensor([1, 32, 32])), INVALID,
                   "has 32x32 pixels; the model takes 28x28"),
    "wrong rank": (guard_pb2.ClassifyRequest(image=tensor([28, 28])), INVALID,
                   "tensor shape [28, 28] is not C x H x W with positive sizes"),
    "unspecified dtype": (guard_pb2.ClassifyRequest(image=tensor([1, 28, 28], dtype=guard_pb2.DTYPE_UNSPECIFIED, data=b"")),
                          INVALID, "tensor dtype is unspecified; set DTYPE_UINT8 or DTYPE_FLOAT32"),
    "short data": (guard_pb2.ClassifyRequest(image=tensor([1, 28, 28], data=bytes(100))), INVALID,
                   "tensor data is 100 bytes; shape [1, 28, 28] of float32 needs 3136"),
    "NaN": (guard_pb2.ClassifyRequest(image=tensor([1, 28, 28], fill=np.nan)), INVALID, "tensor holds NaN or Inf values"),
    "Inf": (guard_pb2.ClassifyRequest(image=tensor([1, 28, 28], fill=np.inf)), INVALID, "tensor holds NaN or Inf values"),
    "out of range": (guard_pb2.ClassifyRequest(image=tensor([1, 28, 28], fill=2.0)), INVALID,
                     "float32 pixels must lie in [0, 1]; got [2, 2]"),
    "unknown model": (guard_pb2.ClassifyRequest(model="nope", image=tensor([1, 28, 28])), grpc.StatusCode.NOT_FOUND,
                      "unknown model 'nope'; loaded: fmnist-guarded, fmnist-plain, fmnist-reject"),
    "unknown version": (guard_pb2.ClassifyRequest(model="fmnist-guarded", version="9", image=tensor([1, 28, 28])),
                        grpc.StatusCode.NOT_FOUND, "model 'fmnist-guarded' has no version '9'; loaded: 1"),
    "message size limit": (guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=bytes(1_500_000))),
                           grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_status_and_message(stub, case):
    request, code, message = BAD_INPUTS[case]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(request, timeout=30)
    assert caught.value.code() == code, caught.value.details()
    assert message in caught.value.details()


def test_resize_policy_converts_and_resizes_images(stub):
    """Encoded images of another size or colour mode are converted to 1 x 28 x 28 (bilinear)."""
    for size, mode in (((56, 56), "L"), ((28, 28), "RGB"), ((40, 20), "RGBA")):
        reply = stub.Classify(guard_pb2.ClassifyRequest(image=guard_pb2.Image(encoded=encoded(size, mode))))
        assert len(reply.probabilities) == 10


def test_batch_errors_name_the_image(stub):
    good = guard_pb2.Image(encoded=encoded())
    with pytest.raises(grpc.RpcError) as caught:
        stub.ClassifyBatch(guard_pb2.ClassifyBatchRequest(images=[good, guard_pb2.Image(encoded=b"junk")]))
    assert caught.value.code() == INVALID and caught.value.details().startswith("image 1: ")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ClassifyBatch(guard_pb2.ClassifyBatchRequest(
            images=[good], batch=guard_pb2.Tensor(shape=[1, 1, 28, 28], dtype=guard_pb2.DTYPE_UINT8, data=bytes(784))))
    assert caught.value.code() == INVALID and caught.value.details() == "set either images or batch, not both"
    with pytest.raises(grpc.RpcError) as caught:
        stub.ClassifyBatch(guard_pb2.ClassifyBatchRequest(
            batch=guard_pb2.Tensor(shape=[600, 1, 28, 28], dtype=guard_pb2.DTYPE_UINT8, data=bytes(600 * 784))))
    assert caught.value.code() == INVALID
    assert caught.value.details() == "request holds 600 images; the server queues at most 512: split it"
