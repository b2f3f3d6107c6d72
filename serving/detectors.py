"""The detector registry and `build_detectors`, which builds a bundle's calibrated detectors
from its manifest (`guard.detectors`: name, threshold, target_fpr, options)."""
from __future__ import annotations

from pathlib import Path

from serving.bundle import Bundle
from serving.confidence import LowConfidence
from serving.engine import EngineOptions
from serving.guard import CalibratedDetector, Detector
from serving.squeezing import FeatureSqueezing

_DETECTORS: dict[str, type] = {}


def register_detector(name: str):
    def wrap(cls):
        _DETECTORS[name] = cls
        return cls

    return wrap


register_detector("feature-squeezing")(FeatureSqueezing)
register_detector("low-confidence")(LowConfidence)


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
    """Instantiate each detector the manifest lists with its calibrated threshold."""
    built = []
    for entry in bundle.guard.get("detectors", []):
        if entry["name"] not in _DETECTORS:
            raise KeyError(f"bundle {bundle.path} uses detector {entry['name']!r}; known: "
                           f"{', '.join(known_detectors())}")
        detector = create_detector(entry["name"], entry.get("options", {}), bundle.path, engine)
        built.append(CalibratedDetector(detector, float(entry["threshold"]), float(entry.get("target_fpr", 0.0))))
    return built
