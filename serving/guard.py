"""The guard core: detectors and the policy, pure functions over arrays (no grpc, no prometheus).

A detector maps (inputs, model outputs) to one score per sample; a threshold, calibrated at
export on clean held-out data to a target false-positive rate, turns the score into a flag.
The policy combines the flags into a verdict and an action.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Protocol

import numpy as np


class Verdict(IntEnum):
    """Values match advguard.v1.Verdict."""

    UNSPECIFIED = 0
    CLEAN = 1
    SUSPICIOUS = 2
    ADVERSARIAL = 3


class Detector(Protocol):
    name: str

    def score(self, x: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """One score per sample; higher means more likely adversarial."""


@dataclass(frozen=True)
class CalibratedDetector:
    detector: Detector
    threshold: float
    target_fpr: float


@dataclass(frozen=True)
class DetectorOutcome:
    name: str
    scores: np.ndarray
    threshold: float
    flagged: np.ndarray
    target_fpr: float


@dataclass(frozen=True)
class GuardResult:
    verdicts: np.ndarray          # Verdict per sample
    attack_scores: np.ndarray     # max over detectors of score / threshold (>= 1: flagged)
    outcomes: list[DetectorOutcome] = field(default_factory=list)


@dataclass(frozen=True)
class Policy:
    """combine: 'any' (one flag is enough) or 'majority'; action: 'flag', 'reject' or 'fallback'.
    A sample flagged by some detectors but not enough for ADVERSARIAL is SUSPICIOUS."""

    combine: str = "any"
    action: str = "flag"

    def __post_init__(self) -> None:
        if self.combine not in ("any", "majority"):
            raise ValueError(f"combine must be 'any' or 'majority', got {self.combine!r}")
        if self.action not in ("flag", "reject", "fallback"):
            raise ValueError(f"action must be flag, reject or fallback, got {self.action!r}")


def run_guard(detectors: list[CalibratedDetector], policy: Policy, x: np.ndarray,
              probs: np.ndarray, probs_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> GuardResult:
    """Score a batch with every detector and apply the policy."""
    n = len(x)
    if not detectors:
        return GuardResult(np.full(n, Verdict.CLEAN, dtype=np.int32), np.zeros(n, dtype=np.float32))
    outcomes = []
    for cal in detectors:
        scores = np.asarray(cal.detector.score(x, probs), dtype=np.float32)
        outcomes.append(DetectorOutcome(cal.detector.name, scores, cal.threshold,
                                        scores > cal.threshold, cal.target_fpr))
    flags = np.stack([o.flagged for o in outcomes], axis=1)
    votes = flags.sum(axis=1)
    needed = 1 if policy.combine == "any" else len(detectors) // 2 + 1
    verdicts = np.where(votes >= needed, Verdict.ADVERSARIAL,
                        np.where(votes > 0, Verdict.SUSPICIOUS, Verdict.CLEAN)).astype(np.int32)
    ratios = np.stack([o.scores / max(o.threshold, 1e-12) for o in outcomes], axis=1)
    return GuardResult(verdicts, ratios.max(axis=1).astype(np.float32), outcomes)
