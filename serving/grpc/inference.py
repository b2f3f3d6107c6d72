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

import numpy as np

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving.grpc.context import deadline_of
from serving.grpc.oip import (  # the message code, shared with serving.native
    infer_response, model_metadata, model_ready, outputs_for, request_tensor, server_metadata, server_ready,
    skip_guard, wanted_outputs,
)
from serving.grpc.status import handle_errors
from serving.runtime.dataplane import DataPlane
from serving.runtime.decode import Decoder
from serving.runtime.models import ServedModel


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
        return server_ready(self.plane, self.ready)

    async def ModelReady(self, request, context):
        return model_ready(self.plane, request, self.ready)

    async def ServerMetadata(self, request, context):
        return server_metadata()

    @handle_errors
    async def ModelMetadata(self, request, context):
        return model_metadata(self.plane, request, self.offered)

    @handle_errors
    async def ModelInfer(self, request, context):
        served = self.plane.model(request.model_name, request.model_version)
        wanted = wanted_outputs(request, self.offered)
        x = await request_images(request, served, self.plane.decoder)
        skip = skip_guard(request)
        deadline = deadline_of(context, self.plane.default_deadline)
        answers = await self.plane.classify(served, x, not skip, deadline)
        return infer_response(answers, wanted, request.id)
