"""Turning wire inputs (encoded images, raw tensors) into model inputs, with precise errors.

Resize policy: an image whose size differs from the bundle's input is resized (bilinear) to
it, as long as each side is at most `Limits.max_side`; channels are converted (RGB -> L by
luminance, L -> RGB by repetition). Raw tensors are never resized: their shape must match.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.bundle import InputSpec
from serving.errors import InputError

FORMATS = ("PNG", "JPEG")


@dataclass(frozen=True)
class Limits:
    """Input caps. max_encoded_bytes: encoded file size; max_pixels: width x height of one image
    before decoding (decompression bombs); max_side: largest side that will be resized;
    max_images: images in one request, checked before any is decoded; max_request_pixels: the
    sum of width x height over one request's encoded images, read from their headers before
    any is decoded (a request of many small bombs)."""

    max_encoded_bytes: int = 4 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 4096
    allow_resize: bool = True
    max_images: int = 4096
    max_request_pixels: int = 64 * 1024 * 1024


def check_count(n: int, limits: Limits) -> None:
    """Refuse a request of more than `limits.max_images` images before reading any of them."""
    if n > limits.max_images:
        raise InputError(f"request holds {n} images; the limit is {limits.max_images} per request")


def declared_pixels(data: bytes, limits: Limits = Limits()) -> int:
    """width x height as the PNG/JPEG header declares it, without decoding the image data."""
    if not data:
        raise InputError("image bytes are empty")
    if len(data) > limits.max_encoded_bytes:
        raise InputError(f"encoded image is {len(data)} bytes; the limit is {limits.max_encoded_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
    except Image.DecompressionBombError as err:
        raise InputError(f"image header declares too many pixels; the limit is {limits.max_pixels} "
                         f"(decompression bomb guard): {err}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"image bytes are not a PNG or JPEG file ({len(data)} bytes could not be decoded)") from err
    if width * height > limits.max_pixels:
        raise InputError(f"image is {width}x{height} = {width * height} pixels; the limit is "
                         f"{limits.max_pixels} (decompression bomb guard)")
    return width * height


def request_pixels(files: list[bytes], limits: Limits) -> int:
    """Check a request's encoded images (count, then each header and their pixel sum) before
    decoding any; the total declared pixels. InputError names the image at fault."""
    check_count(len(files), limits)
    total = 0
    for i, data in enumerate(files):
        try:
            total += declared_pixels(data, limits)
        except InputError as err:
            raise InputError(f"image {i}: {err}" if len(files) > 1 else str(err)) from None
        if total > limits.max_request_pixels:
            raise InputError(f"the request's images hold more than {limits.max_request_pixels} pixels in all "
                             f"(image {i} passes it); send fewer or smaller images per request")
    return total


def decode_image(data: bytes, spec: InputSpec, limits: Limits = Limits()) -> np.ndarray:
    """PNG/JPEG bytes -> C x H x W float32 in [0, 1] matching `spec`."""
    if not data:
        raise InputError("image bytes are empty")
    if len(data) > limits.max_encoded_bytes:
        raise InputError(f"encoded image is {len(data)} bytes; the limit is {limits.max_encoded_bytes}")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as err:
        raise InputError(f"image header declares too many pixels; the limit is {limits.max_pixels} "
                         f"(decompression bomb guard): {err}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"image bytes are not a PNG or JPEG file ({len(data)} bytes could not be decoded)") from err
    if image.format not in FORMATS:
        raise InputError(f"image format {image.format} is not supported; send PNG or JPEG")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InputError(f"image is {width}x{height} = {width * height} pixels; the limit is "
                         f"{limits.max_pixels} (decompression bomb guard)")
    try:
        image.load()
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
        raise InputError(f"image data is truncated or corrupt: {err}") from err
    image = image.convert("L" if spec.channels == 1 else "RGB")
    if (width, height) != (spec.width, spec.height):
        if not limits.allow_resize or max(width, height) > limits.max_side:
            raise InputError(f"image is {width}x{height}; the model takes {spec.width}x{spec.height}")
        image = image.resize((spec.width, spec.height), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


_DTYPES = {"uint8": np.dtype(np.uint8), "float32": np.dtype("<f4")}
_UINT8_MAX = np.float32(255.0)


def tensor_to_array(shape: tuple[int, ...], dtype: str, data: bytes, spec: InputSpec,
                    batched: bool = False) -> np.ndarray:
    """Raw tensor bytes -> float32 in [0, 1]; C x H x W (or N x C x H x W when `batched`)."""
    if dtype not in _DTYPES:
        raise InputError(f"tensor dtype {dtype!r} is not supported; use uint8 or float32")
    expected_rank = 4 if batched else 3
    if not batched and len(shape) == 4 and shape[0] == 1:  # a batch of one is one image
        shape = tuple(shape[1:])
    if len(shape) != expected_rank or min(shape) <= 0:
        want = "N x C x H x W" if batched else "C x H x W"
        raise InputError(f"tensor shape {list(shape)} is not {want} with positive sizes")
    if tuple(shape[-3:]) != spec.shape:
        what = (f"{shape[-3]} channels; the model takes {spec.channels}" if shape[-3] != spec.channels
                else f"{shape[-1]}x{shape[-2]} pixels; the model takes {spec.width}x{spec.height}")
        raise InputError(f"tensor shape {list(shape)} has {what} (C x H x W {list(spec.shape)}); "
                         f"raw tensors are never resized or converted")
    expected = math.prod(shape) * _DTYPES[dtype].itemsize
    if len(data) != expected:
        raise InputError(f"tensor data is {len(data)} bytes; shape {list(shape)} of {dtype} needs {expected}")
    array = np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape)
    if dtype == "uint8":
        return np.divide(array, _UINT8_MAX, dtype=np.float32)  # one float32 array, as astype(float32) / 255
    low, high = array.min(), array.max()  # NaN makes both NaN, which fails the test below; Inf lies outside
    if not (low >= 0.0 and high <= 1.0):
        if not np.isfinite(array).all():
            raise InputError("tensor holds NaN or Inf values")
        raise InputError(f"float32 pixels must lie in [0, 1]; got [{low:.4g}, {high:.4g}]")
    return array.astype(np.float32, copy=False)
