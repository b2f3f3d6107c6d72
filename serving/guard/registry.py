"""The detector registry and `build_detectors`, which builds a bundle's calibrated detectors
from its manifest (`guard.detectors`: name, threshold, target_fpr, options)."""
from __future__ import annotations

from pathlib import Path

from serving.bundle import Bundle, BundleError
from serving.guard.confidence import LowConfidence
from serving.guard.disagreement import Disagreement
from serving.engine import EngineOptions
from serving.guard.policy import CalibratedDetector, Detector
from serving.guard.mia_vote import MIAVote
from serving.guard.squeezing import FeatureSqueezing

_DETECTORS: dict[str, type] = {}


def register_detector(name: str):
    def wrap(cls):
        _DETECTORS[name] = cls
        return cls

    return wrap


register_detector("disagreement")(Disagreement)
register_detector("feature-squeezing")(FeatureSqueezing)
register_detector("low-confidence")(LowConfidence)
register_detector("mia-vote")(MIAVote)


def known_detectors() -> list[str]:
    return sorted(_DETECTORS)


def create_detector(name: str, options: dict | None = None, bundle_dir: Path | None = None,
                    engine: EngineOptions | None = None) -> Detector:
    """A detector by registered name. Example: `create_detector("feature-squeezing", {"bits": 4})`"""
    cls = _DETECTORS.get(name)
    if cls is None:
        raise KeyError(f"unknown detector {name!r}; known: {', '.join(known_detectors())}")
    return cls.from_manifest(Path(bundle_dir or "."), dict(options or {}), engine or EngineOptions())


def build_detectors(bundle: Bundle, engine: EngineOptions | None = None) -> list[CalibratedDetector]:
    """Instantiate each detector the manifest lists with its calibrated threshold.

    A detector that owns a model file (option `file`, e.g. mia-vote's graph) may only use one the
    manifest lists under `models` with role `detector`: those are the files whose SHA-256 the
    loader checked."""
    built = []
    verified = {m.file for m in bundle.models_with_role("detector")}
    for entry in bundle.guard.get("detectors", []):
        if entry["name"] not in _DETECTORS:
            raise KeyError(f"bundle {bundle.path} uses detector {entry['name']!r}; known: "
                           f"{', '.join(known_detectors())}")
        file = entry.get("options", {}).get("file")
        if file is not None and file not in verified:
            raise BundleError(f"{bundle.path}: detector {entry['name']!r} uses {file}, which the manifest's "
                              "models do not list with role 'detector' (its SHA-256 would go unchecked); "
                              "re-export the bundle")
        detector = create_detector(entry["name"], entry.get("options", {}), bundle.path, engine)
        built.append(CalibratedDetector(detector, float(entry["threshold"]), float(entry.get("target_fpr", 0.0))))
    return built
