"""The guard core: detectors and the policy, pure functions over arrays (no grpc, no prometheus).

A detector maps (inputs, model outputs) to one score per sample; a threshold, calibrated at
export on clean held-out data to a target false-positive rate, turns the score into a flag
(`score > threshold`). The policy combines the flags into a verdict and an action.

Detectors that need the primary model's answer on a transformed input (feature squeezing)
declare those transforms as `views`; the pipeline runs the input and every view through the
model in one batch and hands the results over in `Outputs`, so no detector runs a model itself
unless it owns one (`mia-vote` runs the MIA ensemble's graph, a file of the bundle).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Mapping, Protocol

import numpy as np

View = Callable[[np.ndarray], np.ndarray]


class Verdict(IntEnum):
    """Values match advguard.v1.Verdict."""

    UNSPECIFIED = 0
    CLEAN = 1
    SUSPICIOUS = 2
    ADVERSARIAL = 3


# the values as plain ints, for the per-batch array work (an IntEnum member costs a lookup per use)
CLEAN, SUSPICIOUS, ADVERSARIAL = int(Verdict.CLEAN), int(Verdict.SUSPICIOUS), int(Verdict.ADVERSARIAL)

# the one verdict-name table: metrics labels use the lower-case name, answers the upper-case one
VERDICT_NAMES = tuple(v.name.lower() for v in Verdict)


def verdict_name(verdict: int) -> str:
    """'unspecified', 'clean', 'suspicious' or 'adversarial'."""
    return VERDICT_NAMES[int(verdict)]


@dataclass(frozen=True)
class Outputs:
    """The primary model's probabilities on the input (N x K) and on each named view (N x K);
    `reference`: the bundle's reference model's probabilities on the input (N x K), when a
    detector needs them."""

    probs: np.ndarray
    views: Mapping[str, np.ndarray] = field(default_factory=dict)
    reference: np.ndarray | None = None


class Detector(Protocol):
    """`score(x, outputs) -> N scores`, higher = more likely adversarial.

    `x` is N x C x H x W float32 in [0, 1]; `views` names the input transforms whose model
    outputs `score` reads from `outputs.views` (empty when it needs none); `blocking`: `score`
    runs a model of its own, so the server calls it off its event loop; `needs_reference`: `score`
    reads `outputs.reference`, so the bundle must carry a model with role `reference`."""

    name: str
    views: Mapping[str, View]
    blocking: bool
    needs_reference: bool

    def score(self, x: np.ndarray, outputs: Outputs) -> np.ndarray: ...


@dataclass(frozen=True)
class CalibratedDetector:
    detector: Detector
    threshold: float
    target_fpr: float


@dataclass(slots=True)  # not frozen: built for every call's share of a batch, and frozen init is 5x slower
class DetectorOutcome:
    name: str
    scores: np.ndarray
    threshold: float
    flagged: np.ndarray
    target_fpr: float


@dataclass(slots=True)
class GuardResult:
    verdicts: np.ndarray          # Verdict per sample
    attack_scores: np.ndarray     # max over detectors of score / threshold (> 1: flagged)
    outcomes: list[DetectorOutcome] = field(default_factory=list)

    def take(self, index: np.ndarray | slice) -> "GuardResult":
        return GuardResult(self.verdicts[index], self.attack_scores[index],
                           [DetectorOutcome(o.name, o.scores[index], o.threshold, o.flagged[index],
                                            o.target_fpr) for o in self.outcomes])


@dataclass(frozen=True)
class Policy:
    """combine: 'any' (one flag is enough) or 'majority'; action: 'flag', 'reject' or 'fallback'.

    A sample with enough flags is ADVERSARIAL; one flagged by some detectors but not enough is
    SUSPICIOUS (only possible under 'majority'); else CLEAN. `flag` answers normally with the
    verdict; `reject` withholds the class of ADVERSARIAL samples; `fallback` answers them with
    the bundle's fallback model (as `flag` when the bundle has none)."""

    combine: str = "any"
    action: str = "flag"

    def __post_init__(self) -> None:
        if self.combine not in ("any", "majority"):
            raise ValueError(f"combine must be 'any' or 'majority', got {self.combine!r}")
        if self.action not in ("flag", "reject", "fallback"):
            raise ValueError(f"action must be flag, reject or fallback, got {self.action!r}")


def required_views(detectors: list[CalibratedDetector]) -> dict[str, View]:
    """Every view any detector needs, each once (views with the same name are the same)."""
    views: dict[str, View] = {}
    for cal in detectors:
        views.update(cal.detector.views)
    return views


def run_guard(detectors: list[CalibratedDetector], policy: Policy, x: np.ndarray,
              outputs: Outputs) -> GuardResult:
    """Score a batch with every detector and apply the policy.

    Served once per batch on the request path, so it keeps to a few whole-array operations."""
    n = len(x)
    if not detectors:
        return GuardResult(np.full(n, CLEAN, dtype=np.int32), np.zeros(n, dtype=np.float32))
    outcomes = []
    votes = np.zeros(n, dtype=np.int32)
    attack = np.full(n, -np.inf, dtype=np.float32)  # the max over detectors of score / threshold
    for cal in detectors:
        scores = np.asarray(cal.detector.score(x, outputs), dtype=np.float32)
        flagged = scores > cal.threshold
        outcomes.append(DetectorOutcome(cal.detector.name, scores, cal.threshold, flagged, cal.target_fpr))
        votes += flagged
        np.maximum(attack, scores / max(cal.threshold, 1e-12), out=attack)
    needed = 1 if policy.combine == "any" else len(detectors) // 2 + 1
    verdicts = np.where(votes >= needed, ADVERSARIAL, CLEAN).astype(np.int32, copy=False)
    if needed > 1:
        verdicts[(votes > 0) & (votes < needed)] = SUSPICIOUS
    return GuardResult(verdicts, attack, outcomes)


def threshold_for_fpr(clean_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest observed clean score with at most `target_fpr` of the scores above it.

    With `flagged = score > threshold`, the clean false-positive rate on these scores is
    floor(target_fpr * n) / n (less with ties)."""
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    scores = np.sort(np.asarray(clean_scores).ravel())
    if scores.size == 0:
        raise ValueError("no clean scores to calibrate on")
    allowed = int(np.floor(target_fpr * scores.size))
    return float(scores[scores.size - allowed - 1])
