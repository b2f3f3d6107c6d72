"""ONNX Runtime sessions for a bundle's models. Pure inference: no grpc, no prometheus."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)


def available_providers() -> list[str]:
    """CUDA when onnxruntime-gpu and a GPU are present, else CPU."""
    providers = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in providers]
    return chosen + ["CPUExecutionProvider"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class OnnxModel:
    """One ONNX classifier: `logits(x)` for N x C x H x W float32 in [0, 1]."""

    path: Path
    session: ort.InferenceSession
    input_name: str
    output_name: str

    @classmethod
    def load(cls, path: Path, threads: int = 0) -> "OnnxModel":
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=available_providers())
        return cls(path=Path(path), session=session, input_name=session.get_inputs()[0].name,
                   output_name=session.get_outputs()[0].name)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.logits(x))
