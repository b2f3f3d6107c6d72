"""One servable model: primary ONNX model + guard, over N x C x H x W float32 batches.

Pure core shared by the gRPC server and the TorchServe handler: no grpc, no prometheus.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.bundle import Bundle, load_bundle
from serving.engine import OnnxModel
from serving.guard import CalibratedDetector, GuardResult, Policy, Verdict, run_guard


@dataclass(frozen=True)
class PipelineResult:
    probs: np.ndarray          # N x classes
    classes: np.ndarray        # N
    guard: GuardResult | None  # None when the guard was skipped
    answered_by: str           # model file that answered


class Pipeline:
    """Classify and guard a batch. Example: `Pipeline.load("model_store/fmnist-cnn/1").run(x)`."""

    def __init__(self, bundle: Bundle, primary: OnnxModel, detectors: list[CalibratedDetector],
                 policy: Policy) -> None:
        self.bundle = bundle
        self.primary = primary
        self.detectors = detectors
        self.policy = policy

    @classmethod
    def load(cls, path: Path | str, threads: int = 0) -> "Pipeline":
        bundle = load_bundle(path)
        primary = OnnxModel.load(bundle.path / bundle.primary.file, threads=threads)
        from serving.detectors import build_detectors

        detectors = build_detectors(bundle, threads=threads)
        guard = bundle.guard or {}
        policy = Policy(combine=guard.get("policy", "any"), action=guard.get("action", "flag"))
        return cls(bundle, primary, detectors, policy)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    def run(self, x: np.ndarray, guard: bool = True) -> PipelineResult:
        probs = self.primary.probabilities(x)
        result = run_guard(self.detectors, self.policy, x, probs, self.primary.probabilities) if guard else None
        return PipelineResult(probs=probs, classes=probs.argmax(axis=1), guard=result,
                              answered_by=self.bundle.primary.file)


def verdict_name(verdict: int) -> str:
    return Verdict(int(verdict)).name.lower()
