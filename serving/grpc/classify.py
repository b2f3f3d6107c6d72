"""`advguard.v1.GuardedClassifier`'s messages read and written without a transport: the input
checks and the answers every front end of our API shares (grpc.aio's `serving.grpc.classifier`,
the native front end `serving.native`). Imports protobuf, never grpc (this package's `__init__`
imports nothing), so a process with another gRPC core can use it.

Example:
    served, x = await classify_input(plane, request, decoder)   # checks, in the servicer's order
    response = to_response(answers, 0, request.request_id)
"""
from __future__ import annotations

import json

import numpy as np

from protos.advguard.v1 import guard_pb2
from serving.answer import Answers
from serving.errors import InputError
from serving.preprocess import check_count, request_pixels, tensor_to_array
from serving.runtime.dataplane import DataPlane
from serving.runtime.decode import Decoder
from serving.runtime.models import ServedModel

_DTYPE_NAMES = {guard_pb2.DTYPE_UINT8: "uint8", guard_pb2.DTYPE_FLOAT32: "float32"}


def tensor_image(t: guard_pb2.Tensor, spec) -> np.ndarray:
    """One C x H x W Tensor message -> float32 in [0, 1]."""
    dtype = _DTYPE_NAMES.get(t.dtype)
    if dtype is None:
        raise InputError("tensor dtype is unspecified; set DTYPE_UINT8 or DTYPE_FLOAT32")
    return tensor_to_array(tuple(t.shape), dtype, t.data, spec)


def batch_to_array(t: guard_pb2.Tensor, served: ServedModel) -> np.ndarray:
    """An N x C x H x W Tensor message -> float32 in [0, 1]; InputError says what was wrong."""
    dtype = _DTYPE_NAMES.get(t.dtype)
    if dtype is None:
        raise InputError("batch tensor dtype is unspecified; set DTYPE_UINT8 or DTYPE_FLOAT32")
    return tensor_to_array(tuple(t.shape), dtype, t.data, served.bundle.input, batched=True)


async def images_to_array(images, served: ServedModel, decoder: Decoder) -> np.ndarray:
    """Image messages -> N x C x H x W float32: the count and every encoded header checked before
    anything is decoded; encoded images decoded by `decoder` (off the event loop unless tiny)."""
    if not images:
        raise InputError("request has no images: set images or batch")
    check_count(len(images), decoder.limits)
    spec = served.bundle.input
    sources = [image.WhichOneof("source") for image in images]
    if sources == ["tensor"]:  # one raw tensor (the common unary call): no list, no copy
        return tensor_image(images[0].tensor, spec)[None]
    if all(source == "encoded" for source in sources):
        return await decoder.decode([image.encoded for image in images], spec)
    request_pixels([image.encoded for image, source in zip(images, sources) if source == "encoded"], decoder.limits)
    out = []
    for i, (image, source) in enumerate(zip(images, sources)):
        try:
            if source == "encoded":
                out.append((await decoder.decode([image.encoded], spec))[0])
            elif source == "tensor":
                out.append(tensor_image(image.tensor, spec))
            else:
                raise InputError("request has no image: set image.encoded (PNG/JPEG bytes) or image.tensor")
        except InputError as err:
            raise InputError(f"image {i}: {err}" if len(images) > 1 else str(err)) from None
    return np.stack(out)


async def stream_item_to_array(request: guard_pb2.ClassifyRequest, served: ServedModel, decoder: Decoder) -> np.ndarray:
    """A ClassifyStream item -> N x C x H x W: its `batch`, or its one `image`."""
    if request.HasField("batch"):
        if request.HasField("image"):
            raise InputError("set either image or batch, not both")
        return batch_to_array(request.batch, served)
    return await images_to_array([request.image], served, decoder)


def to_response(answers: Answers, i: int, request_id: str = "") -> guard_pb2.ClassifyResponse:
    """Image i of `answers` as a ClassifyResponse (what to show is the answer builder's call)."""
    response = guard_pb2.ClassifyResponse(model=answers.model, model_version=answers.model_version,
                                          answered_by=answers.answered_by(i), request_id=request_id,
                                          class_index=answers.class_index(i))
    if not answers.withheld(i):
        response.class_name = answers.class_name(i)
        response.probabilities.extend(answers.probabilities(i))
    if answers.guarded(i):
        response.verdict = answers.verdict(i)
        response.attack_score = answers.attack_score(i)
        response.action = answers.action
        for d in answers.detectors(i):
            response.detectors.add(**d)
    return response


def model_info(plane: DataPlane, served: ServedModel) -> guard_pb2.ModelInfo:
    bundle, pipeline = served.bundle, served.pipeline
    info = guard_pb2.ModelInfo(
        name=bundle.name, version=bundle.version, versions=plane.versions(bundle.name),
        dataset=bundle.dataset, labels=list(bundle.labels), input_shape=list(bundle.input.shape),
        created=bundle.created, ready=True, guard_policy=pipeline.policy.combine,
        guard_action=pipeline.policy.action)
    for f in bundle.models:
        info.files.add(file=f.file, sha256=f.sha256, role=f.role)
    for d in pipeline.detectors:  # thresholds only under full disclosure
        info.detectors.add(name=d.detector.name, threshold=d.threshold if plane.full else 0.0,
                           calibrated_fpr=d.target_fpr)
    info.robustness_card_json = json.dumps(bundle.robustness or {})
    info.verdict_calibration_json = json.dumps((bundle.guard or {}).get("verdict", {}))
    return info


async def classify_input(plane: DataPlane, request: guard_pb2.ClassifyRequest, decoder) -> tuple[ServedModel, np.ndarray]:
    """A `Classify` request's model and its one image as 1 x C x H x W (InputError, UnknownModelError)."""
    if request.HasField("batch"):
        raise InputError("batch is for ClassifyStream items; send many images in one call with ClassifyBatch")
    served = plane.model(request.model, request.version)
    return served, await images_to_array([request.image], served, decoder)


async def batch_input(plane: DataPlane, request: guard_pb2.ClassifyBatchRequest, decoder) -> tuple[ServedModel, np.ndarray]:
    """A `ClassifyBatch` request's model and images as N x C x H x W (InputError, UnknownModelError)."""
    served = plane.model(request.model, request.version)
    if request.images and request.HasField("batch"):
        raise InputError("set either images or batch, not both")
    if request.HasField("batch"):
        return served, batch_to_array(request.batch, served)
    return served, await images_to_array(request.images, served, decoder)


def batch_response(answers: Answers) -> guard_pb2.ClassifyBatchResponse:
    return guard_pb2.ClassifyBatchResponse(results=[to_response(answers, i) for i in range(len(answers))])


def list_models(plane: DataPlane) -> guard_pb2.ListModelsResponse:
    return guard_pb2.ListModelsResponse(models=[model_info(plane, plane.model(name)) for name in plane.names()])
