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
from importlib import metadata

import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.answer import OIP_OUTPUTS, oip_shape
from serving.errors import UnknownModelError
from serving.grpc.context import deadline_of
from serving.grpc.oip import (  # noqa: F401  (the message code lives in serving.grpc.oip, shared with serving.native)
    GUARD_DETAIL, INPUT, OUTPUTS, TEMPLATES_PER_PIPELINE, infer_response, outputs_for, pack_bytes, request_tensor,
    skip_guard, unpack_bytes, wanted_outputs,
)
from serving.grpc.status import handle_errors
from serving.runtime.dataplane import DataPlane
from serving.runtime.decode import Decoder
from serving.runtime.models import ServedModel


def _version() -> str:
    try:
        return metadata.version("advguard")
    except metadata.PackageNotFoundError:
        return "0"


async def request_images(request: pb.ModelInferRequest, served: ServedModel, decoder: Decoder) -> np.ndarray:
    """The request's `input` tensor as N x C x H x W float32; InputError says what was wrong.
    BYTES (PNG/JPEG files): the declared count is checked before the tensor is split, and every
    header before anything is decoded (`serving.runtime.decode`)."""
    x = request_tensor(request, served.bundle.input, decoder.limits)
    return x if isinstance(x, np.ndarray) else await decoder.decode(x, served.bundle.input)


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
        wanted = wanted_outputs(request, self.offered)
        x = await request_images(request, served, self.plane.decoder)
        skip = skip_guard(request)
        deadline = deadline_of(context, self.plane.default_deadline)
        answers = await self.plane.classify(served, x, not skip, deadline)
        return infer_response(answers, wanted, request.id)
