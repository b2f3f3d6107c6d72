"""Calibrate the guard at export: each detector's threshold is set on clean held-out images so
that at most `target_fpr` of them score above it (the clean false-positive rate).

Scores come from the serving code itself (the exported ONNX model in ONNX Runtime and the
detectors in `serving/`), so the thresholds mean exactly what the server will compute.

Example:
    guard = calibrate(OnnxModel.load("model.onnx"), x_val, GuardSpec(target_fpr=0.05))
    # -> {"detectors": [{"name", "threshold", "target_fpr", "options", "calibration"}, ...],
    #     "policy": "any", "action": "flag"}
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.guard.registry import create_detector, known_detectors
from serving.engine import OnnxModel
from serving.guard import Policy, threshold_for_fpr
from serving.pipeline import model_outputs

log = logging.getLogger(__name__)
DEFAULT_DETECTORS = ("feature-squeezing", "low-confidence")


@dataclass(frozen=True)
class GuardSpec:
    """Which detectors, the clean false-positive rate each is calibrated to, the policy.

    Args: detectors=("feature-squeezing", "low-confidence"); target_fpr=0.05; policy='any' |
    'majority'; action='flag' | 'reject' | 'fallback'; options: detector name -> options
    (e.g. {"feature-squeezing": {"bits": 4}}; `advguard export --mia-run` fills in mia-vote's
    {"file": "mia.onnx"}); max_images: calibration images (None: the whole validation split)."""

    detectors: tuple[str, ...] = DEFAULT_DETECTORS
    target_fpr: float = 0.05
    policy: str = "any"
    action: str = "flag"
    options: dict = field(default_factory=dict)
    max_images: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in (0, 1), got {self.target_fpr}")
        Policy(self.policy, self.action)  # validates both
        unknown = [d for d in self.detectors if d not in known_detectors()]
        if unknown:
            raise KeyError(f"unknown detector {unknown[0]!r}; known: {', '.join(known_detectors())}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {self.max_images}")


def detector_scores(model: OnnxModel, x: np.ndarray, detectors: list, batch_size: int = 512) -> np.ndarray:
    """N x D scores of `detectors` on images `x` (N x C x H x W float32 in [0, 1])."""
    views: dict = {}
    for detector in detectors:
        views.update(detector.views)
    columns = []
    for start in range(0, len(x), batch_size):
        batch = np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)
        outputs = model_outputs(model, batch, views)
        columns.append(np.stack([np.asarray(d.score(batch, outputs), dtype=np.float32) for d in detectors], axis=1))
    return np.concatenate(columns)


def calibrate(model: OnnxModel, x_clean: np.ndarray, spec: GuardSpec, split: str = "validation",
              bundle_dir: Path | None = None) -> dict:
    """The manifest's `guard` section, thresholds set on `x_clean` to `spec.target_fpr`.

    `bundle_dir`: where detectors that own a model file (mia-vote) find it; the same rule holds
    for every detector, including mia-vote, whose vote-share score is discrete (see
    `serving/guard/mia_vote.py`: its measured rate can sit below the target, never above it)."""
    if spec.max_images is not None:
        x_clean = x_clean[:spec.max_images]
    detectors = [create_detector(name, spec.options.get(name, {}), bundle_dir) for name in spec.detectors]
    scores = detector_scores(model, x_clean, detectors) if detectors else np.zeros((len(x_clean), 0))
    entries = []
    for j, detector in enumerate(detectors):
        threshold = threshold_for_fpr(scores[:, j], spec.target_fpr)
        measured = float(np.mean(scores[:, j] > np.float32(threshold)))
        if measured == 0.0 and spec.target_fpr * len(x_clean) >= 1:
            log.warning("%s flags none of the %d calibration images at target FPR %.3g: more than that share "
                        "ties at its highest clean score %.4g, the threshold, so it may never fire (mia-vote: "
                        "unanimous votes on clean images; train a stronger ensemble or raise --target-fpr)",
                        detector.name, len(x_clean), spec.target_fpr, threshold)
        entries.append({"name": detector.name, "threshold": threshold, "target_fpr": spec.target_fpr,
                        "options": detector.options(),
                        "calibration": {"split": split, "images": int(len(x_clean)), "measured_fpr": measured}})
    return {"detectors": entries, "policy": spec.policy, "action": spec.action}
