"""Shipped detectors, built from a bundle's manifest (`guard.detectors`)."""
from __future__ import annotations

from serving.bundle import Bundle
from serving.guard import CalibratedDetector

_DETECTORS: dict = {}


def register_detector(name: str):
    def wrap(cls):
        _DETECTORS[name] = cls
        return cls

    return wrap


def known_detectors() -> list[str]:
    return sorted(_DETECTORS)


def build_detectors(bundle: Bundle, threads: int = 0) -> list[CalibratedDetector]:
    """Instantiate each detector the manifest lists with its calibrated threshold."""
    built = []
    for entry in bundle.guard.get("detectors", []):
        cls = _DETECTORS.get(entry["name"])
        if cls is None:
            raise KeyError(f"bundle {bundle.path} uses detector {entry['name']!r}; known: "
                           f"{', '.join(known_detectors()) or 'none'}")
        detector = cls.from_manifest(bundle, entry.get("options", {}), threads=threads)
        built.append(CalibratedDetector(detector, float(entry["threshold"]), float(entry.get("target_fpr", 0.0))))
    return built
