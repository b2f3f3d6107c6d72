"""TorchServe custom handler: the same core as the gRPC server (bundle verification, input
checks, ONNX Runtime, guard), behind TorchServe's REST API.

The .mar (built by `advguard export --torchserve`) carries the bundle's model.onnx and
manifest.json; this module comes from the installed advguard package, so the handler and the
gRPC server run the same guard code. Each request body is one PNG or JPEG image; the answer is
a JSON object per image. Bad input gets HTTP 400 with the reason, per request of a batch.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from serving.answer import Answers, check_disclosure
from serving.errors import InputError
from serving.pipeline import Pipeline
from serving.preprocess import Limits, decode_image

log = logging.getLogger(__name__)
DISCLOSURE_ENV = "ADVGUARD_DISCLOSURE"  # verdict (default) | full


class AdvguardHandler:
    """Loads the bundle from the unpacked .mar once; `handle` classifies a TorchServe batch."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.limits = Limits()
        # what answers show of the guard (serving.answer): verdict by default, full for operators
        self.disclosure = check_disclosure(os.environ.get(DISCLOSURE_ENV, "verdict"))

    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties.get("model_dir")
        self.pipeline = Pipeline.load(model_dir)
        self.pipeline.warm_up()
        log.info("advguard handler loaded %s version %s", self.pipeline.bundle.name, self.pipeline.bundle.version)

    def describe(self) -> dict:
        """The model description: name, version, files with roles, the guard and the robustness card."""
        assert self.pipeline is not None
        bundle = self.pipeline.bundle
        return {"model": bundle.name, "model_version": bundle.version, "dataset": bundle.dataset,
                "labels": list(bundle.labels),
                "files": [{"file": m.file, "sha256": m.sha256, "role": m.role} for m in bundle.models],
                "guard": {"policy": self.pipeline.policy.combine, "action": self.pipeline.policy.action,
                          "detectors": [d.detector.name for d in self.pipeline.detectors],
                          "verdict": (bundle.guard or {}).get("verdict", {})},
                "robustness": bundle.robustness or {}}

    def _body(self, row: Any) -> bytes:
        body = row.get("data") or row.get("body") if isinstance(row, dict) else row
        if isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        if isinstance(body, str):
            raise InputError("send the image as the raw request body (PNG or JPEG bytes), not as text")
        if not isinstance(body, bytes):
            raise InputError("request has no image body: POST the PNG or JPEG bytes as the body "
                             "(curl -T image.png), not as a form")
        return body

    def handle(self, data: list, context: Any) -> list:
        assert self.pipeline is not None
        replies: list[Any] = [None] * len(data)
        arrays, index = [], []
        for i, row in enumerate(data):
            try:
                arrays.append(decode_image(self._body(row), self.pipeline.bundle.input, self.limits))
                index.append(i)
            except InputError as err:
                context.set_response_status(code=400, phrase=str(err), idx=i)
                replies[i] = {"error": str(err), "code": 400}
        if arrays:
            answers = Answers(self.pipeline, self.pipeline.run(np.stack(arrays)), self.disclosure)
            for j, i in enumerate(index):
                replies[i] = answers.as_dict(j)
        return replies


_service = AdvguardHandler()


def handle(data: list | None, context: Any) -> list | None:
    """TorchServe's entry point (module-level handler). The management API's
    `GET /models/{name}?customized=true` arrives with header `describe: True` and gets
    `describe()`: the bundle's roles, guard and robustness card."""
    if _service.pipeline is None:
        _service.initialize(context)
    if data is None:
        return None
    if _describing(context):
        return [_service.describe()]
    return _service.handle(data, context)


def _describing(context: Any) -> bool:
    try:
        return context.get_request_header(0, "describe") == "True"
    except (AttributeError, IndexError, KeyError, TypeError):
        return False
