"""OIP v2 tensors over HTTP: the request's `input` from JSON (`data`, BYTES elements base64 as
KServe sends images) or from the binary tensor data extension (a JSON header of
`Inference-Header-Content-Length` bytes, then each binary tensor's bytes, its size in the
tensor's `binary_data_size` parameter; BYTES elements 4-byte-length-prefixed as in gRPC's raw
contents), and the answer's outputs back as JSON `data` or binary, as each output asks.

The outputs, their datatypes and shapes are those of the gRPC front end
(`serving.grpc.inference`), column by column from the one answer builder (`serving.answer`).

Example (what the request JSON looks like):
    {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0, ...]}],
     "outputs": [{"name": "class_name"}], "parameters": {"skip_guard": false}}
"""
from __future__ import annotations

import base64
import binascii
import json

import numpy as np

from serving.answer import OIP_OUTPUTS, Answers, oip_column, oip_shape
from serving.errors import InputError
from serving.grpc.oip import INPUT, pack_bytes, unpack_bytes
from serving.preprocess import check_count, tensor_to_array
from serving.runtime.decode import Decoder
from serving.runtime.models import ServedModel

# the outputs' table is the answer builder's (the same for gRPC and REST)
OUTPUT_TYPES, output_shape, column = OIP_OUTPUTS, oip_shape, oip_column


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """(the request's JSON, the binary data after it); InputError says what was wrong."""
    view = memoryview(body)
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise InputError(f"Inference-Header-Content-Length {header_length!r} is not a size within the "
                             f"{len(body)}-byte body")
        view, binary = view[:size], view[size:]
    else:
        binary = view[len(body):]
    try:
        request = json.loads(bytes(view) if header_length is not None else body)
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"request body is not JSON: {err}") from None
    if not isinstance(request, dict):
        raise InputError("request body must be a JSON object with 'inputs'")
    return request, binary


def _shape(value) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InputError(f"input shape must be a list of integers, got {value!r}")
    return tuple(value)


def _flat(data: list) -> list:
    if not any(isinstance(d, list) for d in data):
        return data
    out: list = []
    for d in data:
        out.extend(_flat(d) if isinstance(d, list) else (d,))
    return out


def _raw(tensor: dict, binary: memoryview) -> bytes | None:
    """The tensor's binary data (binary extension), or None when it comes as JSON `data`."""
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InputError(f"input parameters must be a JSON object, got {parameters!r}")
    size = parameters.get("binary_data_size")
    if size is None:
        if len(binary):
            raise InputError(f"{len(binary)} bytes follow the JSON header but no input has a binary_data_size")
        if not isinstance(tensor.get("data"), list):
            raise InputError(f"input {INPUT!r} needs 'data' (a list) or parameter binary_data_size")
        return None
    if size != len(binary):
        raise InputError(f"input {INPUT!r} declares binary_data_size {size!r}; {len(binary)} bytes follow the header")
    return bytes(binary)


def _base64(item, i: int) -> bytes:
    if not isinstance(item, str):
        raise InputError(f"BYTES element {i} must be a base64 string in JSON, got {type(item).__name__}")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"BYTES element {i} is not valid base64") from None


async def request_images(request: dict, binary: memoryview, served: ServedModel, decoder: Decoder) -> np.ndarray:
    """The request's `input` tensor as N x C x H x W float32 (the datatypes and checks of the gRPC
    front end); InputError says what was wrong."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict) \
            or inputs[0].get("name") != INPUT:
        names = ", ".join(repr(t.get("name") if isinstance(t, dict) else t) for t in inputs or ()) \
            if isinstance(inputs, list) else ""
        raise InputError(f"this model takes one input named {INPUT!r}; got {names or 'none'}")
    tensor = inputs[0]
    shape, datatype, spec = _shape(tensor.get("shape")), tensor.get("datatype"), served.bundle.input
    raw = _raw(tensor, binary)
    if datatype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1:
            raise InputError(f"BYTES input shape {list(shape)} must be [N] (or [N, 1]) with N >= 1 files")
        check_count(shape[0], decoder.limits)
        if raw is not None:
            files = unpack_bytes(raw, shape[0])
        else:
            items = _flat(tensor["data"])
            if len(items) > shape[0]:
                raise InputError(f"BYTES tensor holds more than the {shape[0]} elements its shape declares")
            files = [_base64(item, i) for i, item in enumerate(items)]
        if shape[0] != len(files):
            raise InputError(f"BYTES input shape {list(shape)} must be [N] (or [N, 1]) with N = {len(files)} files")
        return await decoder.decode(files, spec)
    if datatype == "FP32":
        if raw is None:
            try:
                raw = np.asarray(tensor["data"], dtype="<f4").tobytes()
            except (ValueError, TypeError):
                raise InputError("FP32 data must be a (nested) list of numbers") from None
        return tensor_to_array(shape, "float32", raw, spec, batched=True)
    if datatype == "UINT8":
        if raw is None:
            try:
                values = np.asarray(tensor["data"])
            except ValueError:
                raise InputError("UINT8 data must be a (nested) list of integers") from None
            if values.size and (values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255):
                raise InputError("UINT8 data must be integers in 0..255")
            raw = values.astype(np.uint8).tobytes()
        return tensor_to_array(shape, "uint8", raw, spec, batched=True)
    raise InputError(f"input datatype {datatype!r} is not supported; use FP32 (pixels in [0, 1]), "
                     f"UINT8 or BYTES (PNG/JPEG files)")


def infer_response(answers: Answers, wanted: list[tuple[str, bool]], request_id: str) -> tuple[bytes, list[bytes]]:
    """The wanted outputs ((name, as binary) pairs) of `answers`: (the JSON header, the binary
    sections that follow it, in output order)."""
    n, k, d = len(answers), len(answers.pipeline.bundle.labels), len(answers.detector_names)
    parameters = {"detectors": answers.words.detectors, "action": answers.action}
    if answers.full:
        parameters["thresholds"] = answers.words.thresholds
    outputs, binary = [], []
    for name, as_binary in wanted:
        values, datatype = column(answers, name), OUTPUT_TYPES[name]
        output = {"name": name, "datatype": datatype, "shape": output_shape(name, n, k, d)}
        if as_binary:
            raw = pack_bytes(values) if datatype == "BYTES" else np.ascontiguousarray(values).tobytes()
            output["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            output["data"] = ([v.decode() for v in values] if datatype == "BYTES"
                              else np.asarray(values).ravel().tolist())
        outputs.append(output)
    header = {"model_name": answers.model, "model_version": answers.model_version, "parameters": parameters,
              "outputs": outputs}
    if request_id:
        header["id"] = request_id
    return json.dumps(header, separators=(",", ":")).encode(), binary
