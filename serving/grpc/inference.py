"""Open Inference Protocol v2 (`inference.GRPCInferenceService`, the KServe / Triton gRPC API) on
the same port, so Triton and KServe clients work unchanged.

Input: one tensor `input`, FP32 N x C x H x W in [0, 1] or UINT8 (0..255), or BYTES N holding
PNG/JPEG files; in `raw_input_contents` or typed `contents`. Request parameter `skip_guard`
(bool) classifies without the guard. Outputs (all by default, or those requested), one row per
image, always as `raw_output_contents`:
    probabilities FP32 N x K; class_index INT64 N (-1: withheld by a `reject` policy);
    class_name BYTES N; verdict BYTES N (CLEAN, SUSPICIOUS, ADVERSARIAL; UNSPECIFIED when
    skipped); attack_score FP32 N; detector_scores FP32 N x D; detector_flags BOOL N x D;
    answered_by BYTES N (the model file that answered: primary, or fallback for flagged images).
What each row shows is decided by `serving.answer` (the same for every front end).
Response parameters name the detectors (`detectors`, comma-separated, the D columns' order),
their `thresholds`, and the policy's `action`. ModelMetadata's parameters carry the bundle's
`robustness_card` and `verdict_calibration` (JSON), `detectors`, `policy` and `action`.

Note: this module's messages share the `inference.` names with tritonclient's own generated
code; a process should import one or the other, never both (the protobuf pool refuses
duplicate names).
"""
from __future__ import annotations

import json
import struct
from importlib import metadata

import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.answer import OIP_OUTPUTS, Answers, oip_column, oip_shape
from serving.errors import InputError, PermissionDeniedError, UnknownModelError
from serving.grpc.context import deadline_of
from serving.grpc.status import handle_errors
from serving.preprocess import check_count, tensor_to_array
from serving.runtime.decode import Decoder
from serving.runtime.dataplane import DataPlane
from serving.runtime.models import ServedModel

INPUT = "input"
OUTPUTS = tuple(OIP_OUTPUTS)


def _version() -> str:
    try:
        return metadata.version("advguard")
    except metadata.PackageNotFoundError:
        return "0"


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


async def request_images(request: pb.ModelInferRequest, served: ServedModel, decoder: Decoder) -> np.ndarray:
    """The request's `input` tensor as N x C x H x W float32; InputError says what was wrong.
    BYTES (PNG/JPEG files): the declared count is checked before the tensor is split, and every
    header before anything is decoded (`serving.runtime.decode`)."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = ", ".join(repr(t.name) for t in request.inputs) or "none"
        raise InputError(f"this model takes one input named {INPUT!r}; got {names}")
    tensor = request.inputs[0]
    if request.raw_input_contents and len(request.raw_input_contents) != 1:
        raise InputError(f"raw_input_contents holds {len(request.raw_input_contents)} buffers for 1 input")
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    shape, spec = tuple(tensor.shape), served.bundle.input
    if tensor.datatype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1:
            raise InputError(f"BYTES input shape {list(shape)} must be [N] (or [N, 1]) with N >= 1 files")
        check_count(shape[0], decoder.limits)
        files = unpack_bytes(raw, shape[0]) if raw is not None else list(tensor.contents.bytes_contents)
        if shape[0] != len(files):
            raise InputError(f"BYTES input shape {list(shape)} must be [N] (or [N, 1]) with N = {len(files)} files")
        return await decoder.decode(files, spec)
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


GUARD_DETAIL = ("attack_score", "detector_scores", "detector_flags")  # shown under full disclosure only


def outputs_for(full: bool) -> tuple[str, ...]:
    return OUTPUTS if full else tuple(o for o in OUTPUTS if o not in GUARD_DETAIL)


TEMPLATES_PER_PIPELINE = 256  # response heads kept per pipeline (kinds of call: outputs asked for, batch size)


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


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.offered = outputs_for(plane.full)  # the outputs this server shows, all sent unless some are asked for
        self.ready = True  # set False when the server begins to stop

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.ready and bool(self.plane.names()))

    async def ModelReady(self, request, context):
        try:
            self.plane.model(request.name, request.version)
        except UnknownModelError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="advguard", version=_version(), extensions=[])

    @handle_errors
    async def ModelMetadata(self, request, context):
        served = self.plane.model(request.name, request.version)
        bundle, k = served.bundle, len(served.bundle.labels)
        d = len(served.pipeline.detectors)
        response = pb.ModelMetadataResponse(name=bundle.name, versions=self.plane.versions(bundle.name),
                                            platform="advguard_guarded_onnx")
        response.inputs.add(name=INPUT, datatype="FP32", shape=[-1, *bundle.input.shape])
        for name in self.offered:
            response.outputs.add(name=name, datatype=OIP_OUTPUTS[name], shape=oip_shape(name, -1, k, d))
        guard = bundle.guard or {}
        response.parameters["robustness_card"].string_param = json.dumps(bundle.robustness or {})
        response.parameters["verdict_calibration"].string_param = json.dumps(guard.get("verdict", {}))
        response.parameters["detectors"].string_param = ",".join(c.detector.name for c in served.pipeline.detectors)
        response.parameters["policy"].string_param = served.pipeline.policy.combine
        response.parameters["action"].string_param = served.pipeline.policy.action
        return response

    @handle_errors
    async def ModelInfer(self, request, context):
        served = self.plane.model(request.model_name, request.model_version)
        offered = self.offered
        wanted = tuple(o.name for o in request.outputs) if request.outputs else offered
        unknown = [name for name in wanted if name not in offered]
        if unknown:
            if unknown[0] in OUTPUTS:
                raise PermissionDeniedError(f"output {unknown[0]!r} is shown only by a server started with "
                                            "--disclosure full; outputs: " + ", ".join(offered))
            raise InputError(f"unknown output {unknown[0]!r}; outputs: {', '.join(offered)}")
        x = await request_images(request, served, self.plane.decoder)
        skip = request.parameters["skip_guard"].bool_param if "skip_guard" in request.parameters else False
        deadline = deadline_of(context, self.plane.default_deadline)
        answers = await self.plane.classify(served, x, not skip, deadline)
        return infer_response(answers, wanted, request.id)
