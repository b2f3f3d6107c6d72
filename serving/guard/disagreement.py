"""Disagreement between the primary model and a robust reference model on the same input.

A standard primary model is accurate on clean images and easy to fool; an adversarially trained
reference is less accurate but hard to move. An attack tuned to fool the primary leaves the
reference where it was, so the two disagree; on clean images they mostly agree. The reference
runs on the same batch as the primary (one more model run per batch).

Scores (option `score`), higher = more likely adversarial, all in [0, 1]:
- `margin` (default): p_ref[top_ref] - p_ref[top_primary], how far the reference prefers its own
  class over the primary's answer (0 when they agree). To pass unflagged with a wrong answer, an
  attacker must bring the reference to within the threshold of that wrong class.
- `doubt`: 1 - p_ref[top_primary], how little the reference believes the primary's answer.
- `tv`: total variation 0.5 * ||p - p_ref||_1 between the two probability vectors.

Example: `Disagreement("margin").score(x, Outputs(probs, reference=ref_probs))`
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.guard.policy import Outputs

SCORES = ("margin", "doubt", "tv")


class Disagreement:
    name = "disagreement"
    views: dict = {}
    blocking = False
    needs_reference = True

    def __init__(self, score: str = "margin") -> None:
        if score not in SCORES:
            raise ValueError(f"disagreement score must be one of {', '.join(SCORES)}, got {score!r}")
        self.kind = score

    @classmethod
    def from_manifest(cls, bundle_dir: Path, options: dict, engine: object = None) -> "Disagreement":
        unknown = set(options) - {"score"}
        if unknown:
            raise ValueError(f"disagreement takes one option, 'score', got {sorted(options)}")
        return cls(str(options.get("score", "margin")))

    def options(self) -> dict:
        return {"score": self.kind}

    def score(self, x: np.ndarray, outputs: Outputs) -> np.ndarray:
        ref = outputs.reference
        if ref is None:
            raise ValueError("disagreement needs the reference model's probabilities (Outputs.reference)")
        if self.kind == "tv":
            return 0.5 * np.abs(outputs.probs - ref).sum(axis=1)
        answer = outputs.probs.argmax(axis=1)
        believed = ref[np.arange(len(answer)), answer]
        if self.kind == "doubt":
            return 1.0 - believed
        return ref.max(axis=1) - believed
