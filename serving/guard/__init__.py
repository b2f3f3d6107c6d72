"""The guard: detectors score each input, a policy turns their flags into a verdict and an action.

- `policy`: the pure core (Verdict, Policy, run_guard, threshold calibration); no grpc, no prometheus.
- `registry`: detector names -> classes, and building a bundle's calibrated detectors.
- one module per detector: `squeezing` (feature-squeezing), `confidence` (low-confidence),
  `mia_vote` (mia-vote).
"""
from serving.guard.policy import (
    CalibratedDetector, Detector, DetectorOutcome, GuardResult, Outputs, Policy, Verdict, View,
    required_views, run_guard, threshold_for_fpr, verdict_name,
)
from serving.guard.registry import build_detectors, create_detector, known_detectors, register_detector

__all__ = [
    "CalibratedDetector", "Detector", "DetectorOutcome", "GuardResult", "Outputs", "Policy", "Verdict", "View",
    "build_detectors", "create_detector", "known_detectors", "register_detector", "required_views", "run_guard",
    "threshold_for_fpr", "verdict_name",
]
