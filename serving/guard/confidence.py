"""Low confidence: score = 1 - max_k p_k(x).

Adversarial examples made with small budgets often sit near a decision boundary, where the
top probability is low. Cheap (no extra model run) and weak against high-confidence attacks;
it is the baseline detector (Hendrycks and Gimpel, ICLR 2017, used the same score for
misclassified and out-of-distribution inputs).
Example: `LowConfidence().score(x, Outputs(probs))`
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.guard.policy import Outputs


class LowConfidence:
    name = "low-confidence"
    views: dict = {}
    blocking = False
    needs_reference = False

    @classmethod
    def from_manifest(cls, bundle_dir: Path, options: dict, engine: object = None) -> "LowConfidence":
        if options:
            raise ValueError(f"low-confidence takes no options, got {sorted(options)}")
        return cls()

    def options(self) -> dict:
        return {}

    def score(self, x: np.ndarray, outputs: Outputs) -> np.ndarray:
        return 1.0 - outputs.probs.max(axis=1)
