"""The methods the native front end serves, by gRPC path: each unary method of
`advguard.v1.GuardedClassifier`, `inference.GRPCInferenceService` and `grpc.health.v1.Health`
answered by the same code as `advguard serve`'s servicers (`serving.grpc.classify`,
`serving.grpc.oip`), the streaming ones refused UNIMPLEMENTED with a message naming `--front grpc`.

Two kinds: **batched** methods (`ModelInfer`, `Classify`, `ClassifyBatch`) are checked call by
call (`check(request) -> Work`) and run through their pipeline a batch at a time
(`serving.native.front`); **per-call** methods answer at once (`answer(request) -> response`).
Both raise the core's errors (`serving.errors`), which `serving.grpc.codes` maps to statuses.

Example:
    table = method_table(Handlers(plane, state))
    transport.start(address, size, [(m.path, m.flags, m.message) for m in table], ...)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from grpc_health.v1 import health_pb2  # protobuf only: this process never imports grpcio

from protos.advguard.v1 import guard_pb2
from protos.inference import grpc_service_pb2 as oip_pb
from serving.answer import Answers
from serving import errors
from serving.errors import InputError, PermissionDeniedError, RequestTooLargeError, UnknownModelError
from serving.grpc import classify, oip
from serving.runtime.dataplane import SKIP_REFUSED, DataPlane
from serving.runtime.models import ServedModel
from serving.native.inline import InlineDecoder, run_now

OPEN, UNIMPLEMENTED = 1, 2  # the transport's flags
SERVICE, OIP_SERVICE, HEALTH = "advguard.v1.GuardedClassifier", "inference.GRPCInferenceService", "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
STREAMING = "is a streaming method, not served by `advguard serve --front native` (unary methods only): use --front grpc"


@dataclass(slots=True)
class Work:
    """A checked call of a batched method: its images, for the pipeline of `served`, and how its
    share of the answers becomes its response."""

    served: ServedModel
    x: np.ndarray
    guard: bool
    encode: Callable[[Answers], bytes]


@dataclass(frozen=True)
class Method:
    path: str
    request: type | None  # the message the call carries (None: never read)
    check: Callable | None = None  # batched: request -> Work
    answer: Callable | None = None  # per call: request -> response message
    flags: int = 0
    message: str = ""  # UNIMPLEMENTED's

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class ServerState:
    """What the answers follow as the server's life goes on: `ready` (False once it begins to
    stop: OIP readiness false, health NOT_SERVING) and `serving` (a model is loaded)."""

    ready: bool = True
    serving: bool = True


class Handlers:
    """The answers of every method, on `plane` (the same data plane as `advguard serve`'s)."""

    def __init__(self, plane: DataPlane, state: ServerState) -> None:
        self.plane = plane
        self.state = state
        self.decoder = InlineDecoder(plane.limits)
        self.offered = oip.outputs_for(plane.full)

    def work(self, served: ServedModel, x: np.ndarray, skip: bool, encode: Callable[[Answers], bytes]) -> Work:
        """What `DataPlane.classify` and the batcher check before a call queues, in their order."""
        if skip and not self.plane.allow_skip_guard:
            raise PermissionDeniedError(SKIP_REFUSED)
        limit = self.plane.models.batching.max_queue_size
        if len(x) > limit:  # the batcher's words
            raise RequestTooLargeError(f"request holds {len(x)} images; the server queues at most {limit}: split it")
        return Work(served, x, not skip, encode)

    def model_infer(self, request: oip_pb.ModelInferRequest) -> Work:
        """In `serving.grpc.inference.InferenceServicer.ModelInfer`'s order."""
        served = self.plane.model(request.model_name, request.model_version)
        wanted = oip.wanted_outputs(request, self.offered)
        x = oip.request_tensor(request, served.bundle.input, self.plane.limits)
        if not isinstance(x, np.ndarray):  # PNG/JPEG files
            x = run_now(self.decoder.decode(x, served.bundle.input))
        return self.work(served, x, oip.skip_guard(request),
                         lambda answers: oip.infer_response(answers, wanted, request.id).SerializeToString())

    def classify(self, request: guard_pb2.ClassifyRequest) -> Work:
        served, x = run_now(classify.classify_input(self.plane, request, self.decoder))
        return self.work(served, x, request.skip_guard,
                         lambda answers: classify.to_response(answers, 0, request.request_id).SerializeToString())

    def classify_batch(self, request: guard_pb2.ClassifyBatchRequest) -> Work:
        served, x = run_now(classify.batch_input(self.plane, request, self.decoder))
        return self.work(served, x, request.skip_guard, lambda answers: classify.batch_response(answers).SerializeToString())

    def health(self, request: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        """As grpc's HealthServicer after `advguard serve` set "", its two services (NOT_FOUND for any other)."""
        if request.service not in ("", SERVICE, OIP_SERVICE):
            raise UnknownModelError("")  # grpc's own answer: NOT_FOUND, no message
        up = self.state.ready and self.state.serving
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING if up
                                              else health_pb2.HealthCheckResponse.NOT_SERVING)


def method_table(h: Handlers) -> list[Method]:
    """Every method the transport routes (its index in this list is the method's number there)."""
    plane, state = h.plane, h.state
    oip_path, ours = f"/{OIP_SERVICE}/", f"/{SERVICE}/"
    return [
        Method(oip_path + "ModelInfer", oip_pb.ModelInferRequest, check=h.model_infer),
        Method(ours + "Classify", guard_pb2.ClassifyRequest, check=h.classify),
        Method(ours + "ClassifyBatch", guard_pb2.ClassifyBatchRequest, check=h.classify_batch),
        Method(oip_path + "ServerLive", oip_pb.ServerLiveRequest, answer=lambda r: oip_pb.ServerLiveResponse(live=True)),
        Method(oip_path + "ServerReady", oip_pb.ServerReadyRequest, answer=lambda r: oip.server_ready(plane, state.ready)),
        Method(oip_path + "ModelReady", oip_pb.ModelReadyRequest, answer=lambda r: oip.model_ready(plane, r, state.ready)),
        Method(oip_path + "ServerMetadata", oip_pb.ServerMetadataRequest, answer=lambda r: oip.server_metadata()),
        Method(oip_path + "ModelMetadata", oip_pb.ModelMetadataRequest,
               answer=lambda r: oip.model_metadata(plane, r, h.offered)),
        Method(ours + "ListModels", guard_pb2.ListModelsRequest, answer=lambda r: classify.list_models(plane)),
        Method(ours + "GetModel", guard_pb2.GetModelRequest,
               answer=lambda r: classify.model_info(plane, plane.model(r.name, r.version))),
        Method(f"/{HEALTH}/Check", health_pb2.HealthCheckRequest, answer=h.health, flags=OPEN),
        Method(ours + "ClassifyStream", None, flags=UNIMPLEMENTED, message=f"ClassifyStream {STREAMING}"),
        Method(f"/{HEALTH}/Watch", None, flags=OPEN | UNIMPLEMENTED,
               message=f"Watch {STREAMING}; poll {HEALTH}/Check instead"),
        Method(f"/{REFLECTION}/ServerReflectionInfo", None, flags=UNIMPLEMENTED,
               message=f"ServerReflectionInfo {STREAMING}"),
    ]


def not_a_request(method: Method) -> InputError:
    return errors.not_a_request(method.request.DESCRIPTOR.full_name)
