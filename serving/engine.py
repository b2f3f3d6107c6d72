"""ONNX Runtime sessions for a bundle's models. Pure inference: no grpc, no prometheus.

The CUDA provider is used when `onnxruntime-gpu` is installed (the `gpu` extra) and a GPU is
visible; CPU otherwise.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    """threads: intra-op threads per session (0: ONNX Runtime's default, one per core);
    spin: let idle worker threads spin (faster on an idle machine, wasteful on a shared one);
    cpu_only: ignore a GPU even when onnxruntime-gpu could use it."""

    threads: int = 0
    spin: bool = False
    cpu_only: bool = False

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


def runtime_conflict() -> str | None:
    """A message when both onnxruntime and onnxruntime-gpu are installed (they overwrite each
    other's files, and which one wins is an accident of install order)."""
    from importlib import metadata

    installed = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
            installed.append(dist)
        except metadata.PackageNotFoundError:
            pass
    if len(installed) == 2:
        return ("both onnxruntime and onnxruntime-gpu are installed; keep one: "
                "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
    return None


def available_providers(cpu_only: bool = False) -> list[str]:
    """CUDA when onnxruntime-gpu and a GPU are present (and not `cpu_only`), then CPU."""
    conflict = runtime_conflict()
    if conflict:
        log.warning(conflict)
    providers = ort.get_available_providers()
    chosen = [] if cpu_only else [p for p in ("CUDAExecutionProvider",) if p in providers]
    return chosen + ["CPUExecutionProvider"]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class OnnxModel:
    """One ONNX classifier: `logits(x)` for N x C x H x W float32 in [0, 1].

    Example: `OnnxModel.load("model_store/fmnist-cnn/1/model.onnx").probabilities(x)`"""

    path: Path
    session: ort.InferenceSession
    input_name: str
    output_name: str

    @classmethod
    def load(cls, path: Path | str, options: EngineOptions | None = None) -> "OnnxModel":
        options = options or EngineOptions()
        session_options = ort.SessionOptions()
        if options.threads:
            session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
        session = ort.InferenceSession(str(path), session_options,
                                       providers=available_providers(options.cpu_only))
        log.debug("loaded %s with providers %s", path, session.get_providers())
        return cls(path=Path(path), session=session, input_name=session.get_inputs()[0].name,
                   output_name=session.get_outputs()[0].name)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.logits(x))
