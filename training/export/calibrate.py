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


def detector_scores(model: OnnxModel, x: np.ndarray, detectors: list, batch_size: int = 512,
                    reference: OnnxModel | None = None) -> np.ndarray:
    """N x D scores of `detectors` on images `x` (N x C x H x W float32 in [0, 1]), computed as
    the server computes them (`reference`: the bundle's reference model, for detectors that
    compare models)."""
    views: dict = {}
    for detector in detectors:
        views.update(detector.views)
    needs_reference = any(getattr(d, "needs_reference", False) for d in detectors)
    columns = []
    for start in range(0, len(x), batch_size):
        batch = np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)
        outputs = model_outputs(model, batch, views, reference if needs_reference else None)
        columns.append(np.stack([np.asarray(d.score(batch, outputs), dtype=np.float32) for d in detectors], axis=1))
    return np.concatenate(columns)


def verdict_flags(scores: np.ndarray, thresholds: np.ndarray, policy: str) -> np.ndarray:
    """N bools: the verdict is ADVERSARIAL (what the server flags) for these scores."""
    votes = (scores > thresholds.astype(np.float32)[None, :]).sum(axis=1)
    needed = 1 if policy == "any" else scores.shape[1] // 2 + 1
    return votes >= needed


def _common_rate(scores: np.ndarray, target_fpr: float, policy: str, fixed: dict[int, float],
                 iterations: int = 40) -> tuple[np.ndarray, float]:
    """Thresholds where the detectors not in `fixed` (column -> threshold) share one own rate r,
    the largest for which the verdict flags at most `target_fpr` (bisection: the verdict's rate
    grows with r)."""
    d = scores.shape[1]

    def at(rate: float) -> np.ndarray:
        return np.array([fixed[j] if j in fixed else threshold_for_fpr(scores[:, j], rate) for j in range(d)])

    def fits(rate: float) -> bool:
        return bool(np.mean(verdict_flags(scores, at(rate), policy)) <= target_fpr)

    low, high = 0.0, (target_fpr if policy == "any" else 0.999)  # under 'any' no detector may exceed the target
    if fits(high):
        return at(high), high
    if not fits(low):
        return at(low), -1.0  # the fixed thresholds alone break the budget
    for _ in range(iterations):
        mid = (low + high) / 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return at(low), low


def joint_thresholds(scores: np.ndarray, target_fpr: float, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds for the D columns of `scores` (clean images) such that the *verdict* after
    `policy` flags at most `target_fpr` of them: every detector gets the same own rate, the
    largest that keeps the verdict within the target. A detector with discrete scores (the MIA
    vote share) whose top value ties on more clean images than that rate would never fire; it
    is then set to fire on its top ties (its smallest possible rate) when that still fits the
    budget, and the others share what is left. Returns (thresholds, each detector's own rate on
    `scores`)."""
    d = scores.shape[1]
    if d == 0:
        return np.zeros(0), np.zeros(0)
    thresholds, _ = _common_rate(scores, target_fpr, policy, {})
    fixed: dict[int, float] = {}
    for j in range(d):
        values = np.unique(scores[:, j])
        if np.any(scores[:, j] > thresholds[j]) or len(values) < 2:
            continue
        lowest_firing = float(values[-2])  # flags exactly the top ties
        trial, rate = _common_rate(scores, target_fpr, policy, {**fixed, j: lowest_firing})
        if rate >= 0:
            fixed[j], thresholds = lowest_firing, trial
    own = np.array([np.mean(scores[:, j] > np.float32(thresholds[j])) for j in range(d)])
    return thresholds, own


def calibrate(model: OnnxModel, x_clean: np.ndarray, spec: GuardSpec, split: str = "validation",
              bundle_dir: Path | None = None, reference: OnnxModel | None = None,
              x_fresh: np.ndarray | None = None, fresh_split: str = "test") -> dict:
    """The manifest's `guard` section: thresholds set jointly on `x_clean` so that the verdict
    flags at most `spec.target_fpr` of them (see `joint_thresholds`), with the verdict's measured
    rate on those images and, given `x_fresh`, on fresh clean images; and each detector's own rate.

    `bundle_dir`: where detectors that own a model file (mia-vote) find it; `reference`: the
    bundle's reference model (disagreement). Discrete scores (mia-vote's vote share) can leave
    the measured rate below the target, never above it on the calibration images."""
    if spec.max_images is not None:
        x_clean = x_clean[:spec.max_images]
    detectors = [create_detector(name, spec.options.get(name, {}), bundle_dir) for name in spec.detectors]
    scores = detector_scores(model, x_clean, detectors, reference=reference) if detectors else np.zeros((len(x_clean), 0))
    thresholds, own_rates = joint_thresholds(scores, spec.target_fpr, spec.policy)
    fresh = (detector_scores(model, x_fresh, detectors, reference=reference)
             if detectors and x_fresh is not None else None)
    entries = []
    for j, detector in enumerate(detectors):
        threshold = float(thresholds[j])
        measured = float(own_rates[j])
        if measured == 0.0:
            log.warning("%s flags none of the %d calibration images within the verdict's %.3g budget: more of "
                        "them tie at its highest clean score %.4g, the threshold, so it may never fire (mia-vote: "
                        "unanimous votes on clean images; train a stronger ensemble or raise --target-fpr)",
                        detector.name, len(x_clean), spec.target_fpr, threshold)
        entry = {"name": detector.name, "threshold": threshold, "target_fpr": measured,
                 "options": detector.options(),
                 "calibration": {"split": split, "images": int(len(x_clean)), "measured_fpr": measured}}
        if fresh is not None:
            entry["fresh"] = {"split": fresh_split, "images": int(len(x_fresh)),
                              "measured_fpr": float(np.mean(fresh[:, j] > np.float32(threshold)))}
        entries.append(entry)
    verdict = {"target_fpr": spec.target_fpr,
               "calibration": {"split": split, "images": int(len(x_clean)),
                               "measured_fpr": float(np.mean(verdict_flags(scores, thresholds, spec.policy)))
                               if detectors else 0.0}}
    if fresh is not None:
        verdict["fresh"] = {"split": fresh_split, "images": int(len(x_fresh)),
                            "measured_fpr": float(np.mean(verdict_flags(fresh, thresholds, spec.policy)))}
    return {"detectors": entries, "policy": spec.policy, "action": spec.action, "verdict": verdict}
