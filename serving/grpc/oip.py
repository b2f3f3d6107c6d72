"""The Open Inference Protocol's `ModelInfer` messages, read and written without a transport:
the input checks and the response building every OIP gRPC front end shares (grpc.aio's
`serving.grpc.inference`, the native front end `serving.native`). Imports protobuf, never grpc
(this package's `__init__` imports nothing), so a process with another gRPC core can use it.

What the tensors mean is documented in `serving.grpc.inference`.
"""
from __future__ import annotations

import json
import struct
from importlib import metadata

import numpy as np

from protos.inference import grpc_service_pb2 as pb
from serving.answer import OIP_OUTPUTS, Answers, oip_column, oip_shape
from serving.bundle import InputSpec
from serving.errors import InputError, PermissionDeniedError, UnknownModelError
from serving.preprocess import Limits, check_count, tensor_to_array
from serving.runtime.dataplane import DataPlane

INPUT = "input"
OUTPUTS = tuple(OIP_OUTPUTS)
GUARD_DETAIL = ("attack_score", "detector_scores", "detector_flags")  # shown under full disclosure only
TEMPLATES_PER_PIPELINE = 256  # response heads kept per pipeline (kinds of call: outputs asked for, batch size)


def pack_bytes(items: list[bytes]) -> bytes:
    """OIP's raw BYTES encoding: each element as a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def unpack_bytes(raw: bytes, most: int) -> list[bytes]:
    """The elements of a raw BYTES tensor; InputError beyond `most` elements (checked as it goes,
    so a flood of tiny elements is refused before it is split up)."""
    items, offset, view = [], 0, memoryview(raw)
    while offset < len(raw):
        if len(items) == most:
            raise InputError(f"BYTES tensor holds more than the {most} elements its shape declares")
        if offset + 4 > len(raw):
            raise InputError("BYTES tensor is truncated: a 4-byte length prefix is cut short")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InputError(f"BYTES tensor is truncated: an element claims {size} bytes, {len(raw) - offset} remain")
        items.append(bytes(view[offset:offset + size]))
        offset += size
    return items


def request_tensor(request: pb.ModelInferRequest, spec: InputSpec, limits: Limits) -> np.ndarray | list[bytes]:
    """The request's `input` tensor: FP32 and UINT8 as N x C x H x W float32, BYTES as its files
    (count checked, not yet decoded: the caller decodes them, `serving.runtime.decode`);
    InputError says what was wrong."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = ", ".join(repr(t.name) for t in request.inputs) or "none"
        raise InputError(f"this model takes one input named {INPUT!r}; got {names}")
    tensor = request.inputs[0]
    if request.raw_input_contents and len(request.raw_input_contents) != 1:
        raise InputError(f"raw_input_contents holds {len(request.raw_input_contents)} buffers for 1 input")
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    shape = tuple(tensor.shape)
    if tensor.datatype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1:
            raise InputError(f"BYTES input shape {list(shape)} must be [N] (or [N, 1]) with N >= 1 files")
        check_count(shape[0], limits)
        files = unpack_bytes(raw, shape[0]) if raw is not None else list(tensor.contents.bytes_contents)
        if shape[0] != len(files):
            raise InputError(f"BYTES input shape {list(shape)} must be [N] (or [N, 1]) with N = {len(files)} files")
        return files
    if tensor.datatype == "FP32":
        data = raw if raw is not None else np.asarray(tensor.contents.fp32_contents, dtype="<f4").tobytes()
        return tensor_to_array(shape, "float32", data, spec, batched=True)
    if tensor.datatype == "UINT8":
        if raw is None:
            values = np.asarray(tensor.contents.uint_contents, dtype=np.uint32)
            if values.size and values.max() > 255:
                raise InputError(f"UINT8 contents hold {int(values.max())}, above 255")
            raw = values.astype(np.uint8).tobytes()
        return tensor_to_array(shape, "uint8", raw, spec, batched=True)
    raise InputError(f"input datatype {tensor.datatype!r} is not supported; use FP32 (pixels in [0, 1]), "
                     f"UINT8 or BYTES (PNG/JPEG files)")


def outputs_for(full: bool) -> tuple[str, ...]:
    return OUTPUTS if full else tuple(o for o in OUTPUTS if o not in GUARD_DETAIL)


def wanted_outputs(request: pb.ModelInferRequest, offered: tuple[str, ...]) -> tuple[str, ...]:
    """The outputs a request asks for (all `offered` when it names none); PermissionDeniedError for
    a guard detail this server does not show, InputError for a name that is no output."""
    wanted = tuple(o.name for o in request.outputs) if request.outputs else offered
    refuse_unknown(wanted, offered)
    return wanted


def refuse_unknown(names, offered: tuple[str, ...]) -> None:
    """PermissionDeniedError for a guard detail this server does not show, InputError for a name
    that is no output (gRPC and REST say the same)."""
    unknown = [name for name in names if name not in offered]
    if unknown:
        if unknown[0] in OUTPUTS:
            raise PermissionDeniedError(f"output {unknown[0]!r} is shown only by a server started with "
                                        "--disclosure full; outputs: " + ", ".join(offered))
        raise InputError(f"unknown output {unknown[0]!r}; outputs: {', '.join(offered)}")


def skip_guard(request: pb.ModelInferRequest) -> bool:
    """The request's `skip_guard` parameter (false when absent)."""
    return request.parameters["skip_guard"].bool_param if "skip_guard" in request.parameters else False


def _template(answers: Answers, wanted: tuple[str, ...]) -> pb.ModelInferResponse:
    """Everything of a response but its id and tensor bytes (model, parameters, each output's
    name, datatype and shape): the same for every call of a kind, so built once per kind and
    copied (one C-level copy instead of a dozen protobuf calls from Python)."""
    words, n = answers.words, len(answers)
    kinds = words.responses  # per pipeline: gone with it on hot reload
    key = (answers.full, n, wanted)
    template = kinds.get(key)
    if template is None:
        if len(kinds) >= TEMPLATES_PER_PIPELINE:  # the kinds are the clients' to choose: bounded
            kinds.clear()
        k, d = len(answers.pipeline.bundle.labels), len(words.detector_names)
        template = pb.ModelInferResponse(model_name=answers.model, model_version=answers.model_version)
        template.parameters["detectors"].string_param = words.detectors
        if answers.full:
            template.parameters["thresholds"].string_param = words.thresholds
        template.parameters["action"].string_param = answers.action
        for name in wanted:
            template.outputs.add(name=name, datatype=OIP_OUTPUTS[name], shape=oip_shape(name, n, k, d))
        kinds[key] = template
    return template


def infer_response(answers: Answers, wanted: tuple[str, ...], request_id: str) -> pb.ModelInferResponse:
    """The wanted outputs of `answers` as OIP tensors (what to show is the answer builder's call)."""
    response = pb.ModelInferResponse()
    response.CopyFrom(_template(answers, wanted))
    response.id = request_id
    response.raw_output_contents.extend(
        [pack_bytes(column) if OIP_OUTPUTS[name] == "BYTES" else np.ascontiguousarray(column).tobytes()
         for name, column in ((name, oip_column(answers, name)) for name in wanted)])
    return response


def _version() -> str:
    try:
        return metadata.version("advguard")
    except metadata.PackageNotFoundError:
        return "0"


def server_ready(plane: DataPlane, ready: bool) -> pb.ServerReadyResponse:
    """`ready`: False once the server begins to stop."""
    return pb.ServerReadyResponse(ready=ready and bool(plane.names()))


def model_ready(plane: DataPlane, request: pb.ModelReadyRequest, ready: bool) -> pb.ModelReadyResponse:
    try:
        plane.model(request.name, request.version)
    except UnknownModelError:
        return pb.ModelReadyResponse(ready=False)
    return pb.ModelReadyResponse(ready=ready)


def server_metadata() -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name="advguard", version=_version(), extensions=[])


def model_metadata(plane: DataPlane, request: pb.ModelMetadataRequest, offered: tuple[str, ...]) -> pb.ModelMetadataResponse:
    """The bundle's input, the `offered` outputs, and its card and guard as parameters (UnknownModelError)."""
    served = plane.model(request.name, request.version)
    bundle, k = served.bundle, len(served.bundle.labels)
    d = len(served.pipeline.detectors)
    response = pb.ModelMetadataResponse(name=bundle.name, versions=plane.versions(bundle.name),
                                        platform="advguard_guarded_onnx")
    response.inputs.add(name=INPUT, datatype="FP32", shape=[-1, *bundle.input.shape])
    for name in offered:
        response.outputs.add(name=name, datatype=OIP_OUTPUTS[name], shape=oip_shape(name, -1, k, d))
    guard = bundle.guard or {}
    response.parameters["robustness_card"].string_param = json.dumps(bundle.robustness or {})
    response.parameters["verdict_calibration"].string_param = json.dumps(guard.get("verdict", {}))
    response.parameters["detectors"].string_param = ",".join(c.detector.name for c in served.pipeline.detectors)
    response.parameters["policy"].string_param = served.pipeline.policy.combine
    response.parameters["action"].string_param = served.pipeline.policy.action
    return response
