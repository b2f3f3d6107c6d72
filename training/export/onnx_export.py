"""Export a PyTorch classifier to ONNX (opset 17, dynamic batch) and check parity."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
    """Write `model` (in eval mode) as ONNX with a dynamic batch axis; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = torch.rand(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), opset_version=OPSET, dynamo=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return path


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def onnx_parity(model: nn.Module, path: Path, images: torch.Tensor, batch_size: int = 64) -> float:
    """Largest absolute difference between PyTorch and ONNX Runtime probabilities."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    model = model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            expected = torch.softmax(model(batch), dim=1).numpy()
            logits = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy().astype(np.float32)})[0]
            worst = max(worst, float(np.abs(softmax(logits) - expected).max()))
    return worst
