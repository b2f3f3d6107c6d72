"""Decoding encoded images without holding up the event loop (protocol-neutral: every front end
decodes through `Decoder`).

A request's images are checked first, all of them, from their headers only (count, then each
image's declared width x height, then their sum: `serving.preprocess.request_pixels`). Images
whose declared size is tiny (at most `INLINE_PIXELS` in all, e.g. one 28 x 28 PNG: ~20 us) are
decoded inline; anything larger is decoded in the decoder's own small thread pool, so neither
the event loop nor the model threads wait on it, and a flood of decompression-heavy images
queues there, bounded by the per-request pixel cap.

Example: `x = await decoder.decode(files, spec)`   # N x C x H x W float32
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from serving.bundle import InputSpec
from serving.errors import InputError
from serving.preprocess import Limits, decode_image, request_pixels

INLINE_PIXELS = 64 * 64  # declared pixels of a whole request decoded on the event loop


def decode_all(files: list[bytes], spec: InputSpec, limits: Limits) -> np.ndarray:
    out = []
    for i, data in enumerate(files):
        try:
            out.append(decode_image(data, spec, limits))
        except InputError as err:
            raise InputError(f"image {i}: {err}" if len(files) > 1 else str(err)) from None
    return np.stack(out)


class Decoder:
    def __init__(self, limits: Limits, threads: int = 1) -> None:
        self.limits = limits
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="advguard-decode")

    async def decode(self, files: list[bytes], spec: InputSpec) -> np.ndarray:
        """PNG/JPEG files -> N x C x H x W float32 in [0, 1]; InputError names the image at fault."""
        if not files:
            raise InputError("request holds no images")
        if request_pixels(files, self.limits) <= INLINE_PIXELS:
            return decode_all(files, spec, self.limits)
        return await asyncio.get_running_loop().run_in_executor(self.pool, decode_all, files, spec, self.limits)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
