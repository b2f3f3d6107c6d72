"""The MLServer runtime of the peer benchmark (`bench/peers.py`): an `MLModel` that answers OIP
`infer` on one input tensor (FP32 N x C x H x W in [0, 1]) with `probabilities` (FP32 N x K) and
`class_index` (INT64 N) from ONNX Runtime (`onnx_classifier`). The model file is the model
settings' `parameters.uri`; ONNX Runtime's intra-op threads are `parameters.extra.threads`.
Runs in MLServer's venv (build/peers/mlserver) with bench/peers on PYTHONPATH."""
from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from onnx_classifier import OnnxClassifier


class OnnxRuntimeClassifier(MLModel):
    async def load(self) -> bool:
        parameters = self.settings.parameters
        threads = int((parameters.extra or {}).get("threads", 1))
        self.classifier = OnnxClassifier(parameters.uri, threads)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        probs, classes = self.classifier(x)
        return InferenceResponse(model_name=self.name, model_version=self.version, id=payload.id,
                                 outputs=[NumpyCodec.encode_output("probabilities", probs),
                                          NumpyCodec.encode_output("class_index", classes)])
