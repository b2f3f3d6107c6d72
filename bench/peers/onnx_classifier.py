"""The one model call every peer runtime makes: ONNX Runtime on a bundle's model file, with the
session options advguard's engine uses (`serving.engine.OnnxModel`: `threads` intra-op threads,
one inter-op thread, sequential execution, all graph optimizations, no spinning), then softmax
and argmax, so each server does the same work per image. Imported by the MLServer and KServe
runtimes in their own venvs (numpy and onnxruntime only).

Example: `OnnxClassifier("model_store/fmnist-fast/1/model.onnx", threads=1)(x)  # probs, classes`
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort


class OnnxClassifier:
    def __init__(self, path: str, threads: int = 1) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N x C x H x W float32 in [0, 1] -> (probabilities N x K float32, classes N int64)."""
        logits = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return probs, probs.argmax(axis=1).astype(np.int64)
