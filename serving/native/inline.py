"""The shared async input code (`serving.grpc.classify.images_to_array` and the rest), run on the
native front end's Python thread, which has no event loop: every image decoded inline
(`InlineDecoder`), so the coroutines never suspend and `run_now` drives them to their end.

Example: `served, x = run_now(classify_input(plane, request, InlineDecoder(limits)))`
"""
from __future__ import annotations

from collections.abc import Coroutine
from typing import TypeVar

import numpy as np

from serving.bundle import InputSpec
from serving.errors import InputError
from serving.preprocess import Limits, request_pixels
from serving.runtime.decode import decode_all

T = TypeVar("T")


class InlineDecoder:
    """`serving.runtime.decode.Decoder`'s interface and checks, decoding on the calling thread."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    async def decode(self, files: list[bytes], spec: InputSpec) -> np.ndarray:
        if not files:
            raise InputError("request holds no images")
        request_pixels(files, self.limits)  # every header checked before anything is decoded
        return decode_all(files, spec, self.limits)


def run_now(coroutine: Coroutine[object, object, T]) -> T:
    """The value of a coroutine that never awaits anything that suspends."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a coroutine suspended on the native front end's thread (it has no event loop)")
