"""The ONNX Runtime engine: CPU unless onnxruntime-gpu and a GPU are present."""
from __future__ import annotations

import numpy as np


def test_cpu_provider_and_batched_logits(guarded_bundle):
    from serving.engine import EngineOptions, OnnxModel, available_providers, runtime_conflict

    assert available_providers(cpu_only=True) == ["CPUExecutionProvider"]
    assert available_providers()[-1] == "CPUExecutionProvider"
    assert runtime_conflict() is None  # only one onnxruntime distribution installed
    model = OnnxModel.load(guarded_bundle / "model.onnx", EngineOptions(threads=1, cpu_only=True))
    assert model.providers == ["CPUExecutionProvider"]
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    batched = model.probabilities(x)
    assert batched.shape == (5, 10)
    np.testing.assert_allclose(batched.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(model.probabilities(x[2:3])[0], batched[2], atol=1e-5)
