"""ONNX Runtime sessions for a bundle's models. Pure inference: no grpc, no prometheus.

The CUDA provider is used when `onnxruntime-gpu` is installed (the `gpu` extra) and a GPU is
visible; CPU otherwise.

A bundle's models run from the bytes its loader verified, never from a second read of the file
(which could have been swapped since it was hashed): inside `with verified_models(bundle)`,
`OnnxModel.load(path)` takes the bundle's verified bytes for `path` and refuses any other file.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)
# path -> verified bytes, while a bundle's models are being built (see verified_models)
_verified: contextvars.ContextVar[dict[Path, bytes] | None] = contextvars.ContextVar("advguard_verified", default=None)


@contextlib.contextmanager
def verified_models(bundle) -> Iterator[None]:
    """Inside the block, `OnnxModel.load(bundle.path / file)` runs the bytes `load_bundle`
    verified for `file` (not the file on disk), and a path the bundle did not verify is refused."""
    token = _verified.set({bundle.path / file: data for file, data in bundle.blobs.items()})
    try:
        yield
    finally:
        _verified.reset(token)


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
    def load(cls, path: Path | str, options: EngineOptions | None = None, data: bytes | None = None) -> "OnnxModel":
        """The model in file `path`, or in `data` (its bytes, `path` then names it); inside
        `verified_models`, the verified bytes for `path`."""
        options = options or EngineOptions()
        verified = _verified.get()
        if data is None and verified is not None:
            data = verified.get(Path(path))
            if data is None:
                from serving.bundle import BundleError

                raise BundleError(f"{path} is not a model file the bundle's manifest lists (its SHA-256 was "
                                  "not checked); refusing to load it")
        session_options = ort.SessionOptions()
        if options.threads:
            session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
        session = ort.InferenceSession(data if data is not None else str(path), session_options,
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
