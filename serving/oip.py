"""Open Inference Protocol v2 (`inference.GRPCInferenceService`, the KServe / Triton gRPC API) on
the same port, so Triton and KServe clients work unchanged.

Input: one tensor `input`, FP32 N x C x H x W in [0, 1] or UINT8 (0..255), or BYTES N holding
PNG/JPEG files; in `raw_input_contents` or typed `contents`. Request parameter `skip_guard`
(bool) classifies without the guard. Outputs (all by default, or those requested), one row per
image, always as `raw_output_contents`:
    probabilities FP32 N x K; class_index INT64 N (-1: withheld by a `reject` policy);
    class_name BYTES N; verdict BYTES N (CLEAN, SUSPICIOUS, ADVERSARIAL; UNSPECIFIED when
    skipped); attack_score FP32 N; detector_scores FP32 N x D; detector_flags BOOL N x D.
Response parameters name the detectors (`detectors`, comma-separated, the D columns' order),
their `thresholds`, and the policy's `action`.

Note: this module's messages share the `inference.` names with tritonclient's own generated
code; a process should import one or the other, never both (the protobuf pool refuses
duplicate names).
"""
from __future__ import annotations

import struct
from importlib import metadata

import grpc
import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.dispatch import Dispatcher
from serving.guard import Verdict
from serving.interceptors import abort
from serving.pipeline import PipelineResult
from serving.preprocess import InputError, decode_image, tensor_to_array
from serving.served import ServedModel

INPUT = "input"
OUTPUTS = ("probabilities", "class_index", "class_name", "verdict", "attack_score",
           "detector_scores", "detector_flags")
_VERDICTS = [Verdict(v).name.encode() for v in range(len(Verdict))]


def _version() -> str:
    try:
        return metadata.version("advguard")
    except metadata.PackageNotFoundError:
        return "0"


def pack_bytes(items: list[bytes]) -> bytes:
    """OIP's raw BYTES encoding: each element as a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def unpack_bytes(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InputError("BYTES tensor is truncated: a 4-byte length prefix is cut short")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InputError(f"BYTES tensor is truncated: an element claims {size} bytes, {len(raw) - offset} remain")
        items.append(raw[offset:offset + size])
        offset += size
    return items


def request_images(request: pb.ModelInferRequest, served: ServedModel, limits) -> np.ndarray:
    """The request's `input` tensor as N x C x H x W float32; InputError says what was wrong."""
    if len(request.inputs) != 1 or request.inputs[0].name != INPUT:
        names = ", ".join(repr(t.name) for t in request.inputs) or "none"
        raise InputError(f"this model takes one input named {INPUT!r}; got {names}")
    tensor = request.inputs[0]
    if request.raw_input_contents and len(request.raw_input_contents) != 1:
        raise InputError(f"raw_input_contents holds {len(request.raw_input_contents)} buffers for 1 input")
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    shape, spec = tuple(tensor.shape), served.bundle.input
    if tensor.datatype == "BYTES":
        files = unpack_bytes(raw) if raw is not None else list(tensor.contents.bytes_contents)
        if len(shape) not in (1, 2) or shape[0] != len(files) or (len(shape) == 2 and shape[1] != 1):
            raise InputError(f"BYTES input shape {list(shape)} must be [N] (or [N, 1]) with N = {len(files)} files")
        if not files:
            raise InputError("BYTES input holds no images")
        return np.stack([decode_image(f, spec, limits) for f in files])
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


def _output(response: pb.ModelInferResponse, name: str, datatype: str, array: np.ndarray | list[bytes],
            shape: tuple[int, ...]) -> None:
    response.outputs.add(name=name, datatype=datatype, shape=list(shape))
    response.raw_output_contents.append(pack_bytes(array) if datatype == "BYTES" else np.ascontiguousarray(array).tobytes())


def infer_response(served: ServedModel, result: PipelineResult, wanted: list[str], request_id: str) -> pb.ModelInferResponse:
    bundle, n = served.bundle, len(result.classes)
    response = pb.ModelInferResponse(model_name=bundle.name, model_version=bundle.version, id=request_id)
    guard = result.guard
    names = [d.detector.name for d in served.pipeline.detectors]
    response.parameters["detectors"].string_param = ",".join(names)
    response.parameters["thresholds"].string_param = ",".join(f"{d.threshold:.6g}" for d in served.pipeline.detectors)
    response.parameters["action"].string_param = served.pipeline.policy.action
    classes = np.where(result.rejected, -1, result.classes).astype("<i8")
    for name in wanted:
        if name == "probabilities":
            probs = np.where(result.rejected[:, None], 0.0, result.probs).astype("<f4")
            _output(response, name, "FP32", probs, probs.shape)
        elif name == "class_index":
            _output(response, name, "INT64", classes, (n,))
        elif name == "class_name":
            _output(response, name, "BYTES", [bundle.labels[c].encode() if c >= 0 else b"" for c in classes], (n,))
        elif name == "verdict":
            verdicts = guard.verdicts if guard is not None else np.zeros(n, dtype=np.int32)
            _output(response, name, "BYTES", [_VERDICTS[v] for v in verdicts], (n,))
        elif name == "attack_score":
            scores = guard.attack_scores if guard is not None else np.zeros(n)
            _output(response, name, "FP32", np.asarray(scores, dtype="<f4"), (n,))
        elif name == "detector_scores":
            cols = [o.scores for o in guard.outcomes] if guard is not None else []
            scores = np.stack(cols, axis=1) if cols else np.zeros((n, len(names)))
            _output(response, name, "FP32", scores.astype("<f4"), (n, len(names)))
        elif name == "detector_flags":
            cols = [o.flagged for o in guard.outcomes] if guard is not None else []
            flags = np.stack(cols, axis=1) if cols else np.zeros((n, len(names)), dtype=bool)
            _output(response, name, "BOOL", flags.astype(np.bool_), (n, len(names)))
    return response


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.ready = True  # set False when the server begins to stop

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.ready and bool(self.dispatcher.models.repo.names()))

    async def ModelReady(self, request, context):
        try:
            self.dispatcher.models.repo.get(request.name, request.version)
        except LookupError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="advguard", version=_version(), extensions=[])

    async def ModelMetadata(self, request, context):
        served = await self.dispatcher.model(request.name, request.version, context)
        bundle, k = served.bundle, len(served.bundle.labels)
        d = len(served.pipeline.detectors)
        response = pb.ModelMetadataResponse(name=bundle.name, versions=self.dispatcher.models.repo.versions(bundle.name),
                                            platform="advguard_guarded_onnx")
        response.inputs.add(name=INPUT, datatype="FP32", shape=[-1, *bundle.input.shape])
        for name, datatype, shape in (("probabilities", "FP32", [-1, k]), ("class_index", "INT64", [-1]),
                                      ("class_name", "BYTES", [-1]), ("verdict", "BYTES", [-1]),
                                      ("attack_score", "FP32", [-1]), ("detector_scores", "FP32", [-1, d]),
                                      ("detector_flags", "BOOL", [-1, d])):
            response.outputs.add(name=name, datatype=datatype, shape=shape)
        return response

    async def ModelInfer(self, request, context):
        served = await self.dispatcher.model(request.model_name, request.model_version, context)
        wanted = [o.name for o in request.outputs] or list(OUTPUTS)
        unknown = [name for name in wanted if name not in OUTPUTS]
        if unknown:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"unknown output {unknown[0]!r}; outputs: {', '.join(OUTPUTS)}")
        try:
            x = request_images(request, served, self.dispatcher.limits)
        except InputError as err:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(err))
        skip = request.parameters["skip_guard"].bool_param if "skip_guard" in request.parameters else False
        result = await self.dispatcher.infer(served, x, not skip, context)
        return infer_response(served, result, wanted, request.id)
