"""The Open Inference Protocol v2 over HTTP/JSON: the REST twin of `serving.grpc.inference`, on
the same data plane, with the same inputs, outputs, parameters and rules.

    GET  /v2/health/live, /v2/health/ready        200 {"live"/"ready": true} (ready: 503 when not)
    GET  /v2                                      server metadata
    GET  /v2/models/{name}[/versions/{v}]         model metadata, parameters as gRPC's ModelMetadata
    GET  /v2/models/{name}[/versions/{v}]/ready   200 {"name", "ready": true} (503 when stopping)
    POST /v2/models/{name}[/versions/{v}]/infer   JSON tensors, or the binary tensor data extension

Infer request parameters: `skip_guard` (bool), `binary_data_output` (bool: every output binary);
a requested output's `binary_data` parameter asks for it binary. Core errors map to HTTP codes
in `serving.rest.status`.
"""
from __future__ import annotations

import asyncio
import json
from importlib import metadata
from typing import NamedTuple

from serving.errors import InputError
from serving.grpc.oip import INPUT, outputs_for, refuse_unknown
from serving.rest.tensors import OUTPUT_TYPES, infer_response, output_shape, request_images, split_body
from serving.runtime.dataplane import DataPlane

JSON = b"application/json"


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: bytes = JSON
    header_length: int | None = None  # Inference-Header-Content-Length of a binary answer


def json_reply(obj: dict, status: int = 200) -> Reply:
    return Reply(status, json.dumps(obj, separators=(",", ":")).encode())


def _version() -> str:
    try:
        return metadata.version("advguard")
    except metadata.PackageNotFoundError:
        return "0"


def _parameters(obj: dict) -> dict:
    parameters = obj.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InputError(f"'parameters' must be a JSON object, got {parameters!r}")
    return parameters


def _wanted(request: dict, offered: tuple[str, ...]) -> list[tuple[str, bool]]:
    """The requested outputs as (name, binary) pairs (all offered when none are named)."""
    parameters = _parameters(request)
    all_binary = parameters.get("binary_data_output") is True
    asked = request.get("outputs")
    if not asked:
        return [(name, all_binary) for name in offered]
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise InputError("'outputs' must be a list of objects with a 'name'")
    wanted = [(o["name"], _parameters(o).get("binary_data", all_binary) is True) for o in asked]
    refuse_unknown([name for name, _ in wanted], offered)
    return wanted


class RestInference:
    """The OIP handlers; `ready` goes False when the server begins to stop."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.ready = True

    def live(self) -> Reply:
        return json_reply({"live": True})

    def server_ready(self) -> Reply:
        ready = self.ready and bool(self.plane.names())
        return json_reply({"ready": ready}, 200 if ready else 503)

    def model_ready(self, name: str, version: str) -> Reply:
        served = self.plane.model(name, version)  # UnknownModelError: 404
        return json_reply({"name": served.bundle.name, "ready": self.ready}, 200 if self.ready else 503)

    def server_metadata(self) -> Reply:
        return json_reply({"name": "advguard", "version": _version(), "extensions": ["binary_tensor_data"]})

    def model_metadata(self, name: str, version: str) -> Reply:
        served = self.plane.model(name, version)
        bundle, guard = served.bundle, served.bundle.guard or {}
        k, d = len(bundle.labels), len(served.pipeline.detectors)
        outputs = [{"name": o, "datatype": OUTPUT_TYPES[o], "shape": output_shape(o, -1, k, d)}
                   for o in outputs_for(self.plane.full)]
        return json_reply({
            "name": bundle.name, "versions": self.plane.versions(bundle.name), "platform": "advguard_guarded_onnx",
            "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, *bundle.input.shape]}],
            "outputs": outputs,
            "parameters": {"robustness_card": json.dumps(bundle.robustness or {}),
                           "verdict_calibration": json.dumps(guard.get("verdict", {})),
                           "detectors": ",".join(c.detector.name for c in served.pipeline.detectors),
                           "policy": served.pipeline.policy.combine, "action": served.pipeline.policy.action}})

    async def infer(self, name: str, version: str, body: bytes, header_length: str | None) -> Reply:
        served = self.plane.model(name, version)
        request, binary = split_body(body, header_length)
        wanted = _wanted(request, outputs_for(self.plane.full))
        skip = _parameters(request).get("skip_guard", False)
        if not isinstance(skip, bool):
            raise InputError(f"parameter skip_guard must be true or false, got {skip!r}")
        request_id = request.get("id", "")
        if not isinstance(request_id, str):
            raise InputError(f"'id' must be a string, got {request_id!r}")
        x = await request_images(request, binary, served, self.plane.decoder)
        deadline = (None if self.plane.default_deadline is None
                    else asyncio.get_running_loop().time() + self.plane.default_deadline)
        answers = await self.plane.classify(served, x, not skip, deadline)
        header, sections = infer_response(answers, wanted, request_id)
        if not sections:
            return Reply(200, header)
        return Reply(200, header + b"".join(sections), b"application/octet-stream", len(header))
